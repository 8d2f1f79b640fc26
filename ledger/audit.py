"""Recomputing a log: every event hash, Merkle leaf, batch digest, batch signature and the tree.

The auditor consumes batch and event records in `seq` order, wherever they come from (the
database or an exported JSONL file), and raises `IntegrityError` naming the first `seq` at which
anything differs. It does no I/O.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, NamedTuple

from . import merkle
from .canonical import (
    PLAIN_HEAD,
    canonical_bytes,
    event_and_leaf_bytes,
    event_bytes,
    event_parts,
    plain,
    recorded_at_member,
)
from .errors import IntegrityError, LedgerError
from .events import EVENT_TYPES, batch_digest
from .keys import verify_signature


@dataclass(frozen=True)
class BatchRecord:
    batch: int
    actor: str
    key: str
    digest: bytes
    signature: bytes
    first_seq: int
    last_seq: int

    def export(self) -> dict[str, Any]:
        return {
            "record": "batch",
            "batch": self.batch,
            "actor": self.actor,
            "key": self.key,
            "digest": self.digest.hex(),
            "signature": self.signature.hex(),
            "first_seq": self.first_seq,
            "last_seq": self.last_seq,
        }


class EventRecord(NamedTuple):
    """One event as stored (a tuple: millions are read by `log verify`)."""

    seq: int
    id: str
    type: str
    actor: str
    occurred_at: str
    recorded_at: str
    body: Mapping[str, Any]
    hash: bytes
    batch: int
    body_text: str | None = None  # the stored bytes, when read from the database
    leaf: bytes | None = None  # the stored leaf hash, when read from the database

    def parsed_body(self) -> Mapping[str, Any]:
        """The body, parsed from the stored text when it was read without parsing."""
        if self.body or self.body_text is None:
            return self.body
        return dict(json.loads(self.body_text))

    def signed_bytes(self) -> bytes:
        """RFC 8785 of `id, type, actor, occurred_at, body`: built around the stored body text
        when there is one (a stored body that is not canonical then fails the hash check)."""
        if self.body_text is None:
            return canonical_bytes(self.signed_dict())
        return event_bytes(self.id, self.type, self.actor, self.occurred_at,
                           self.body_text.encode())  # fmt: skip

    def signed_and_leaf_bytes(self) -> tuple[bytes, bytes]:
        """The hashed bytes and the Merkle leaf's bytes (with `recorded_at`)."""
        if self.body_text is None:
            signed = self.signed_dict()
            leaf = canonical_bytes({**signed, "recorded_at": self.recorded_at})
            return canonical_bytes(signed), leaf
        return event_and_leaf_bytes(self.id, self.type, self.actor, self.occurred_at,
                                    self.body_text.encode(), self.recorded_at)  # fmt: skip

    def signed_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
            "body": self.body,
        }

    def export(self) -> dict[str, Any]:
        return {
            "record": "event",
            "seq": self.seq,
            "id": self.id,
            "type": self.type,
            "actor": self.actor,
            "occurred_at": self.occurred_at,
            "recorded_at": self.recorded_at,
            "body": self.body,
            "hash": self.hash.hex(),
            "batch": self.batch,
        }


@dataclass(frozen=True)
class AuditReport:
    size: int
    batches: int
    root: bytes


class Auditor:
    """Feeds on records in log order; `finish` returns the recomputed tree."""

    def __init__(self, keep_nodes_from: int = 1) -> None:
        self.frontier = merkle.Frontier.empty()
        self._keep = keep_nodes_from  # completed subtrees of lower levels are not reported
        self._keys: dict[str, str] = {}
        self._batch: BatchRecord | None = None
        self._hashes: list[bytes] = []
        self._batches = 0
        self._last_recorded = ""
        self.new_nodes: list[tuple[int, int, bytes]] = []

    @property
    def size(self) -> int:
        return self.frontier.size

    def batch(self, rec: BatchRecord) -> None:
        self._close_batch()
        expected = self.size + 1
        if rec.first_seq != expected or rec.last_seq < rec.first_seq:
            raise IntegrityError(
                expected, "batch range", f"batch {rec.batch} covers {rec.first_seq}..{rec.last_seq}"
            )
        self._batch = rec
        self._hashes = []

    def event(self, rec: EventRecord) -> bytes:
        """Check one event; returns its recomputed Merkle leaf hash."""
        seq = self.size + 1
        batch = self._batch
        if rec.seq != seq:
            raise IntegrityError(seq, "sequence", f"expected seq {seq}, found {rec.seq}")
        if batch is None or rec.seq > batch.last_seq or rec.batch != batch.batch:
            raise IntegrityError(seq, "batch membership", f"event claims batch {rec.batch}")
        if rec.actor != batch.actor:
            raise IntegrityError(seq, "actor", f"{rec.actor!r} in a batch of {batch.actor!r}")
        if rec.recorded_at < self._last_recorded:
            raise IntegrityError(seq, "recorded_at", "decreases along seq")
        self._last_recorded = rec.recorded_at
        signed, leaf_data = rec.signed_and_leaf_bytes()
        self._check_hash(rec, signed)
        self._track_key(rec)
        self._hashes.append(rec.hash)
        leaf = merkle.leaf_hash(leaf_data)
        if rec.leaf is not None and rec.leaf != leaf:
            raise IntegrityError(seq, "leaf hash", "stored leaf differs from the recomputed one")
        keep = self._keep
        self.new_nodes.extend(n for n in self.frontier.append(leaf) if n[0] >= keep)
        if seq == batch.last_seq:
            self._close_batch()
        return leaf

    def stored_events(self, rows: Sequence[StoredRow]) -> None:
        """Check events as the database holds them (`StoredRow`), all of the current batch.

        The same checks as `event`, in one loop over the rows with the canonical bytes built
        around each stored body. A row it cannot pass (the first of a batch, whose key is
        checked; a party event, which changes keys; anything that differs) goes through
        `event`, which raises naming the seq or accepts it, and the loop goes on after it.
        """
        i, n = 0, len(rows)
        while i < n:
            i += self._stored_run(rows, i)
            if i < n:
                self.event(_record(rows[i]))
                i += 1

    def _stored_run(self, rows: Sequence[StoredRow], start: int) -> int:
        """How many rows from `start` pass every check; their effects are applied."""
        batch = self._batch
        if batch is None:
            return 0
        expected = self.size + 1
        if expected == batch.first_seq:
            return 0  # the batch's key is checked by `event`
        number, actor, last_seq = batch.batch, batch.actor, batch.last_seq
        run = rows[start:]
        if not plain(actor):
            return 0
        # ids and times that RFC 8785 writes between quotes unchanged, checked all at once
        end = len(run)
        if not plain("".join([r[1] for r in run]) + "".join([r[4] for r in run])):
            end = next(i for i, r in enumerate(run) if not (plain(r[1]) and plain(r[4])))
        end = max(0, min(end, last_seq - expected + 1))  # the rows of this batch only
        last_recorded = self._last_recorded
        # a batch shares one recorded_at, hence one leaf member, and is mostly of one type: the
        # bytes after an event's head in its leaf change only when one of them does
        member_at, tail, member_tail = "", b"", b""
        tail_type: str | None = None
        tails = _TAILS
        digest, leaf_prefix = hashlib.sha256, merkle.LEAF_PREFIX
        hashes, leaves = self._hashes, []
        for row in islice(run, end):
            seq, id_, type_, actor_, occurred_at, recorded_at, body, stored, leaf, batch_no = row
            if (seq != expected or batch_no != number or actor_ != actor
                    or recorded_at < last_recorded):  # fmt: skip
                break
            if type_ != tail_type or recorded_at != member_at:
                found = tails.get(type_)
                if found is None:
                    break
                tail_type, tail, member_at = type_, found, recorded_at
                member_tail = recorded_at_member(recorded_at) + tail
            head = (PLAIN_HEAD % (actor, body, id_, occurred_at)).encode()
            if digest(head + tail).digest() != stored:
                break
            recomputed = digest(leaf_prefix + head + member_tail).digest()
            if recomputed != leaf:
                break
            hashes.append(stored)
            leaves.append(recomputed)
            last_recorded = recorded_at
            expected += 1
        if leaves:
            self._last_recorded = last_recorded
            self.new_nodes.extend(self.frontier.extend(leaves, min_level=self._keep))
            if self.size == last_seq:
                self._close_batch()
        return len(leaves)

    def _check_hash(self, rec: EventRecord, signed: bytes) -> None:
        recomputed = hashlib.sha256(signed).digest()
        if recomputed != rec.hash:
            raise IntegrityError(
                rec.seq,
                "event hash",
                f"stored {rec.hash.hex()[:16]}…, recomputed {recomputed.hex()[:16]}…",
            )

    def _track_key(self, rec: EventRecord) -> None:
        batch = self._batch
        assert batch is not None
        if rec.seq == batch.first_seq:
            current = self._keys.get(rec.actor)
            if current is None and rec.type == "party.registered":
                current = str(rec.parsed_body().get("public_key"))
            if current != batch.key:
                raise IntegrityError(
                    rec.seq, "batch key", f"batch {batch.batch} is not signed by the actor's key"
                )
        if rec.type in ("party.registered", "party.key_rotated"):
            body = rec.parsed_body()
            self._keys[str(body.get("party"))] = str(body.get("public_key"))

    def _close_batch(self) -> None:
        batch = self._batch
        if batch is None:
            return
        if self.size != batch.last_seq:
            raise IntegrityError(
                self.size + 1,
                "batch range",
                f"batch {batch.batch} ends before seq {batch.last_seq}",
            )
        if batch_digest(self._hashes) != batch.digest:
            raise IntegrityError(batch.first_seq, "batch digest", f"batch {batch.batch}")
        try:
            verify_signature(batch.key, batch.digest, batch.signature, f"batch {batch.batch}")
        except LedgerError as e:
            raise IntegrityError(batch.first_seq, "batch signature", str(e)) from None
        self._batches += 1
        self._batch = None

    @property
    def last_recorded_at(self) -> str:
        return self._last_recorded

    def finish(self) -> AuditReport:
        if self._batch is not None:
            raise IntegrityError(
                self.size + 1, "batch range", f"batch {self._batch.batch} is incomplete"
            )
        return AuditReport(self.size, self._batches, self.frontier.root())


StoredRow = tuple[int, str, str, str, str, str, str, bytes, bytes, int]
"""An event row in the events table's column order: `seq, id, type, actor, occurred_at,
recorded_at, body (the canonical text), hash, leaf, batch`."""

_KEY_EVENTS = frozenset(("party.registered", "party.key_rotated"))
# the tails of event types `Auditor.stored_events` checks in its loop (the key events change
# what the next batches are checked against, so `event` takes them)
_TAILS = {t: event_parts("", t, "", "", b"")[1] for t in EVENT_TYPES if t not in _KEY_EVENTS}


def _record(row: StoredRow) -> EventRecord:
    seq, id_, type_, actor, occurred_at, recorded_at, body, stored, leaf, batch = row
    return EventRecord(seq, id_, type_, actor, occurred_at, recorded_at, {}, bytes(stored),
                       batch, body, bytes(leaf))  # fmt: skip


def audit(records: Iterable[BatchRecord | EventRecord]) -> tuple[Auditor, AuditReport]:
    """Run the auditor over a whole stream of records."""
    auditor = Auditor()
    for rec in records:
        if isinstance(rec, EventRecord):
            auditor.event(rec)
        else:
            auditor.batch(rec)
    return auditor, auditor.finish()


def parse_export_line(line: str, number: int) -> BatchRecord | EventRecord | dict[str, Any]:
    """One line of `edvex log export` back into a record (the header comes back as a dict)."""
    try:
        obj = json.loads(line)
        kind = obj.get("record")
        if kind == "event":
            return EventRecord(
                seq=obj["seq"],
                id=obj["id"],
                type=obj["type"],
                actor=obj["actor"],
                occurred_at=obj["occurred_at"],
                recorded_at=obj["recorded_at"],
                body=obj["body"],
                hash=bytes.fromhex(obj["hash"]),
                batch=obj["batch"],
            )
        if kind == "batch":
            return BatchRecord(
                batch=obj["batch"],
                actor=obj["actor"],
                key=obj["key"],
                digest=bytes.fromhex(obj["digest"]),
                signature=bytes.fromhex(obj["signature"]),
                first_seq=obj["first_seq"],
                last_seq=obj["last_seq"],
            )
        if kind is None and obj.get("format") == "edvex.log/1":
            return dict(obj)
        raise ValueError(f"unknown record {kind!r}")
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise IntegrityError(None, "export", f"line {number}: {e}") from None
