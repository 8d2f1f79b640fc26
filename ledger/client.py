"""The SDK: `ledger.Client`, for services that emit events (DESIGN.md, "Public interfaces").

It validates each event as it is made, buffers, batches by count and by time, signs each batch
once, and retries a failed append with the same signed batch, so a retry never duplicates.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

from .errors import InvalidEvent, LedgerError, PartialDuplicate, StoreError
from .events import Entry, Event, UsageMaker, parse_event
from .keys import KeyPair, read_key
from .store import AppendResult, Ledger, SignedBatch
from .values import amount_micros, format_timestamp, now_timestamp, uuid7

AmountLike = str | Decimal | int


class Transport(Protocol):
    """Where batches go: the ledger itself, or anything that forwards to it."""

    def append(self, batch: SignedBatch) -> AppendResult: ...


def to_micros(value: AmountLike | None, what: str, event_id: str | None = None) -> int | None:
    """SDK amounts are currency units: "0.35", Decimal("0.35") or 3 (three units)."""
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    try:
        return amount_micros(value, what)
    except ValueError as e:
        raise InvalidEvent(event_id, f"body.{what}", str(e)) from None


class Client:
    """Buffered, batched, signed event submission for one party."""

    def __init__(
        self,
        transport: Transport,
        party: str,
        key: KeyPair,
        *,
        batch_size: int = 1000,
        max_delay: float = 1.0,
        retries: int = 5,
        backoff: float = 0.05,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.party = party
        self._transport = transport
        self._key = key
        self._batch_size = batch_size
        self._max_delay = max_delay
        self._retries = retries
        self._backoff = backoff
        self._usage = UsageMaker(party)
        self._amounts: dict[object, int | None] = {}
        # the events waiting to be sent, by id (in the order they came): a request retried while
        # its event still waits here is recognised. The SDK's own uses wait as `UsageEntry`s.
        self._buffer: dict[str, Entry] = {}
        self._oldest = 0.0
        self._lock = threading.RLock()
        self._error: LedgerError | None = None
        self._owned: Ledger | None = None
        self._stop = threading.Event()
        self._timer: threading.Thread | None = None
        if max_delay > 0:
            self._timer = threading.Thread(target=self._tick, name="edvex-flush", daemon=True)
            self._timer.start()

    @classmethod
    def open(cls, url: str, party: str, key: str | Path | KeyPair, **options: Any) -> Client:
        """A client over its own connection to the ledger at `url`, closed with the client."""
        pair = key if isinstance(key, KeyPair) else read_key(Path(key))
        ledger = Ledger.open(url)
        client = cls(ledger, party, pair, **options)
        client._owned = ledger
        return client

    def __enter__(self) -> Client:
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.close()

    def close(self) -> None:
        """Flush what is buffered and stop the timer; the owned connection closes too."""
        self._stop.set()
        if self._timer is not None:
            self._timer.join()
            self._timer = None
        try:
            self.flush()
        finally:
            if self._owned is not None:
                self._owned.close()
                self._owned = None

    # --- one method per event type ------------------------------------------------------------

    def register_party(self, kind: str, name: str | None = None, *, id: str | None = None) -> str:
        body = {
            "party": self.party,
            "kind": kind,
            "public_key": self._key.public_hex,
            "name": self.party if name is None else name,
        }
        return self._add("party.registered", body, id)

    def rotate_key(self, new_key: KeyPair, *, id: str | None = None) -> str:
        """Rotate to `new_key`: the rotation is signed by the current key and sent at once."""
        body = {"party": self.party, "public_key": new_key.public_hex}
        with self._lock:
            event_id = self._add("party.key_rotated", body, id)
            self.flush()
            self._key = new_key
        return event_id

    def register_asset(
        self,
        asset: str,
        kind: str,
        *,
        content_hash: str | None = None,
        uri: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> str:
        body = _without_none(
            {
                "asset": asset,
                "kind": kind,
                "content_hash": content_hash,
                "uri": uri,
                "metadata": metadata,
            }
        )
        return self._add("asset.registered", body, id)

    def grant_consent(
        self,
        asset: str,
        grantee: str,
        purposes: Sequence[str],
        *,
        share: str | Decimal | None = None,
        per_unit: str | Decimal | None = None,
        tiers: Sequence[tuple[int | None, str | Decimal]] | None = None,
        minimum: AmountLike | None = None,
        valid_from: datetime | str | None = None,
        valid_until: datetime | str | None = None,
        grant: str | None = None,
        id: str | None = None,
    ) -> str:
        """Grant consent; returns the grant id (generated when not given)."""
        grant = uuid7() if grant is None else grant
        terms = _without_none(
            {
                "share": share,
                "per_unit": per_unit,
                "minimum": to_micros(minimum, "terms.minimum", id),
                "tiers": [{"up_to": u, "per_unit": p} for u, p in tiers] if tiers else None,
            }
        )
        body = _without_none(
            {
                "grant": grant,
                "asset": asset,
                "grantee": grantee,
                "purposes": list(purposes),
                "terms": terms,
                "valid_from": format_timestamp(datetime.now(UTC))
                if valid_from is None
                else valid_from,
                "valid_until": valid_until,
            }
        )
        self._add("consent.granted", body, id)
        return grant

    def revoke_consent(self, grant: str, *, id: str | None = None) -> str:
        return self._add("consent.revoked", {"grant": grant}, id)

    def derive(
        self,
        asset: str,
        kind: str,
        purpose: str,
        parents: Iterable[tuple[str, str | int | Decimal, str] | Mapping[str, Any]],
        *,
        content_hash: str | None = None,
        uri: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        id: str | None = None,
    ) -> str:
        """Register `asset` derived from `parents`, given as (asset, weight, grant) or dicts."""
        plist = [
            dict(p) if isinstance(p, Mapping) else {"asset": p[0], "weight": p[1], "grant": p[2]}
            for p in parents
        ]
        body = _without_none(
            {
                "asset": asset,
                "kind": kind,
                "purpose": purpose,
                "parents": plist,
                "content_hash": content_hash,
                "uri": uri,
                "metadata": metadata,
            }
        )
        return self._add("asset.derived", body, id)

    def record_usage(
        self,
        asset: str,
        units: int,
        revenue: AmountLike | None = None,
        *,
        grant: str | None = None,
        id: str | None = None,
        occurred_at: str | None = None,
    ) -> str:
        """Record one use. A caller retrying a request under its own `id` passes the request's
        `occurred_at` too, so the retry is the same event (a no-op) rather than a conflict."""
        fresh = id is None and occurred_at is None  # made here: canonical already
        event_id = uuid7() if id is None else id
        micros = self._micros(revenue, event_id)
        when = now_timestamp() if occurred_at is None else occurred_at
        if fresh:  # the hot path: a tuple of strings, not a model (`events.UsageEntry`)
            entry = self._usage.entry(event_id, when, asset, units, micros, grant)
            if entry is not None:
                return self._buffered(entry)
        return self._buffered(self._usage(event_id, when, asset, units, micros, grant, fresh=fresh))

    def _micros(self, revenue: AmountLike | None, event_id: str) -> int | None:
        """`to_micros`, remembering the few distinct amounts a service charges."""
        if revenue is None:
            return None
        # a decimal string is its own key (it equals only itself); other values go with their
        # type, as 1, 1.0 and True are equal keys that the models tell apart
        key = revenue if type(revenue) is str else (type(revenue), revenue)
        try:
            return self._amounts[key]
        except KeyError:
            pass
        except TypeError:  # not hashable: to_micros says what is wrong with it
            return to_micros(revenue, "revenue", event_id)
        micros = to_micros(revenue, "revenue", event_id)
        if len(self._amounts) >= 1024:
            self._amounts.clear()
        self._amounts[key] = micros
        return micros

    def close_settlement(
        self, run: int, cut: int, statements_root: str, *, id: str | None = None
    ) -> str:
        body = {"run": run, "cut": cut, "statements_root": statements_root}
        return self._add("settlement.closed", body, id)

    def submit(self, event: Mapping[str, Any]) -> str:
        """Add an event given as a dict (`type`, `body`, optional `id`, `occurred_at`); the
        actor is always this client's party."""
        if not isinstance(event, Mapping):
            raise InvalidEvent(None, "event", "must be a JSON object")
        unknown = sorted(set(event) - {"type", "body", "id", "occurred_at"})
        if unknown:
            event_id = event.get("id") if isinstance(event.get("id"), str) else None
            raise InvalidEvent(event_id, unknown[0], "not a field a client may set "
                               "(type, body, id, occurred_at)")  # fmt: skip
        return self._add(
            str(event.get("type")), event.get("body"), event.get("id"), event.get("occurred_at")
        )

    def append_events(self, events: Sequence[Event]) -> list[AppendResult]:
        """Sign and send ready-made events now, in batches, after anything buffered."""
        with self._lock:
            results = self.flush()
            for start in range(0, len(events), self._batch_size):
                results.append(self._send(list(events[start : start + self._batch_size])))
            return results

    # --- buffering, signing, retrying ---------------------------------------------------------

    def _add(self, type_: str, body: Any, id: str | None, occurred_at: Any = None) -> str:
        event = parse_event(
            {
                "id": id if id is not None else uuid7(),
                "type": type_,
                "actor": self.party,
                "occurred_at": now_timestamp() if occurred_at is None else occurred_at,
                "body": body,
            }
        )
        return self._buffered(event)

    def _buffered(self, event: Entry) -> str:
        event_id = event[0] if isinstance(event, tuple) else event.id
        with self._lock:
            if self._error is not None:
                self._raise_pending()
            buffer = self._buffer
            waiting = buffer.get(event_id)
            if waiting is not None:  # a retry of a request still in the buffer
                if self._model(waiting) != self._model(event):
                    raise InvalidEvent(event_id, "id", "a different event with this id is "
                                       "waiting in the buffer")  # fmt: skip
                return event_id
            if not buffer:
                self._oldest = time.monotonic()
            buffer[event_id] = event
            if len(buffer) >= self._batch_size:
                self._flush_locked()
        return event_id

    def _model(self, entry: Entry) -> Event:
        if isinstance(entry, tuple):
            return SignedBatch(self.party, self._key.public_hex, (entry,), b"").events[0]
        return entry

    def flush(self) -> list[AppendResult]:
        """Send everything buffered now; returns the results of the batches sent."""
        with self._lock:
            self._raise_pending()
            return self._flush_locked()

    def _flush_locked(self) -> list[AppendResult]:
        results = []
        while self._buffer:
            chunk = list(islice(self._buffer.values(), self._batch_size))
            try:
                results.append(self._send(chunk))
            except StoreError:
                raise  # the ledger could not be reached: the events stay buffered
            except LedgerError:
                self._drop(len(chunk))  # rejected: the batch is dropped, the rest stays
                raise
            self._drop(len(chunk))
        return results

    def _send(self, events: list[Entry]) -> AppendResult:
        batch = SignedBatch.sign(self.party, self._key, events)
        attempt = 0
        while True:
            try:
                return self._transport.append(batch)
            except PartialDuplicate as e:
                # Some events landed in an earlier batch: sign the rest anew (same ids).
                rest = [x for x, i in zip(batch.entries, batch.ids, strict=True)
                        if i not in e.known]  # fmt: skip
                batch = SignedBatch.sign(self.party, self._key, rest)
            except StoreError:
                attempt += 1
                if attempt > self._retries:
                    raise
                time.sleep(self._backoff * 2 ** (attempt - 1))

    def _drop(self, count: int) -> None:
        """Forget the `count` oldest buffered events (sent, or refused)."""
        if count >= len(self._buffer):
            self._buffer.clear()
            return
        for event_id in list(islice(self._buffer, count)):
            del self._buffer[event_id]

    def _tick(self) -> None:
        period = max(self._max_delay / 4, 0.01)
        while not self._stop.wait(period):
            with self._lock:
                due = self._buffer and time.monotonic() - self._oldest >= self._max_delay
                if due and self._error is None:
                    try:
                        self._flush_locked()
                    except LedgerError as e:
                        self._error = e

    def _raise_pending(self) -> None:
        if self._error is not None:
            error, self._error = self._error, None
            raise error


def _without_none(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}
