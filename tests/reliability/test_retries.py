"""Guarantee 3 of issue 5: retries never duplicate (and never lose).

`ledger.Client` sends through a transport that wraps the ledger and fails at random (a seeded
RNG, one per run), in four ways:

* before: `StoreError` before anything reaches the ledger (connection refused);
* after: the append commits, then `StoreError` (the reply is lost);
* slow: the call sleeps past the caller's timeout, then raises `StoreError`; nothing committed;
* late: the call sleeps past the timeout and raises `StoreError`, while the request, already on
  its way, reaches the ledger afterwards (a thread appends the same signed batch later), so it
  races with the client's own retry.

The client runs with few retries, so it sometimes gives up; the application then does what
docs/sdk.md says (the events stay buffered; send again) and calls `flush()` until it succeeds. It
also flushes at random points, so batches of different sizes carry the same events and the
ledger's `PartialDuplicate` path is taken. In the end each event must be in the log exactly once
(ids, usage rows and summed units), and `ledger.verify()` passes.
"""

from __future__ import annotations

import collections
import random
import threading
import time
from typing import Any

import pytest
from figures import FIGURES
from helpers import Market
from sqlalchemy import func, select

from ledger import (
    AppendResult,
    Client,
    Ledger,
    LedgerError,
    PartialDuplicate,
    SignedBatch,
    StoreError,
)
from ledger.schema import events as events_table
from ledger.schema import usage as usage_table

SEEDS = range(4)
BATCH_SIZES = (3, 7, 50, 200)  # one per seed: many small sends, a few large ones
EVENTS_PER_SEED = 500
TIMEOUT = 0.02  # the caller's timeout, in seconds, for the slow and late failures
FAILURES = {"ok": 0.55, "before": 0.15, "after": 0.15, "slow": 0.05, "late": 0.10}


def deployer(ledger: Ledger) -> Market:
    m = Market(ledger)
    m.party("dev", "developer")
    m.party("dep", "deployer")
    m.do("dev", "register_asset", "model-1", "model")
    m.do("dev", "grant_consent", "model-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    return m


class Flaky:
    """A transport over the ledger that fails as the seeded RNG says (see the module's doc)."""

    def __init__(self, ledger: Ledger, rng: random.Random) -> None:
        self.ledger = ledger
        self.rng = rng
        self.kinds = list(FAILURES)
        self.weights = list(FAILURES.values())
        self.counts: collections.Counter[str] = collections.Counter()
        self.late: list[threading.Thread] = []
        self.late_outcomes: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()

    def _append(self, batch: SignedBatch) -> AppendResult:
        try:
            result = self.ledger.append(batch)
        except PartialDuplicate:
            with self.lock:
                self.counts["partial duplicate"] += 1
            raise
        if result.duplicate:
            with self.lock:
                self.counts["duplicate no-op"] += 1
        return result

    def append(self, batch: SignedBatch) -> AppendResult:
        kind = self.rng.choices(self.kinds, self.weights)[0]
        with self.lock:
            self.counts[kind] += 1
        if kind == "before":
            raise StoreError("database error: connection refused")
        if kind == "after":
            self._append(batch)
            raise StoreError("database error: server closed the connection unexpectedly")
        if kind in ("slow", "late"):
            if kind == "late":
                thread = threading.Thread(
                    target=self._late, args=(batch, TIMEOUT * self.rng.uniform(1.2, 3))
                )
                thread.start()
                self.late.append(thread)
            time.sleep(TIMEOUT * 1.5 if kind == "slow" else TIMEOUT)
            raise StoreError("database error: timed out")
        return self._append(batch)

    def _late(self, batch: SignedBatch, delay: float) -> None:
        time.sleep(delay)
        try:
            result = self._append(batch)
            outcome = "duplicate" if result.duplicate else "appended"
        except LedgerError as e:  # nobody hears the answer of a late request
            outcome = type(e).__name__
        with self.lock:
            self.late_outcomes[outcome] += 1

    def join(self) -> None:
        for thread in self.late:
            thread.join()


def app_flush(client: Client) -> int:
    """The application's flush: after a StoreError the events stay buffered; send again."""
    gave_up = 0
    while True:
        try:
            client.flush()
            return gave_up
        except StoreError:
            gave_up += 1


def one_run(ledger: Ledger, m: Market, seed: int) -> dict[str, Any]:
    rng = random.Random(f"retries-{seed}")  # the same failures on each backend
    flaky = Flaky(ledger, random.Random(rng.random()))
    batch_size = BATCH_SIZES[seed % len(BATCH_SIZES)]
    expected: dict[str, int] = {}
    gave_up = 0
    client = Client(flaky, "dep", m.keys["dep"], batch_size=batch_size, max_delay=0,
                    retries=rng.choice([0, 1, 2, 3]), backoff=0.001)  # fmt: skip
    try:
        for i in range(EVENTS_PER_SEED):
            event_id, units = f"s{seed}-{i:05d}", rng.randrange(0, 1000)
            try:
                client.record_usage("model-1", units, "0.01", id=event_id)
            except StoreError:
                gave_up += 1  # the event was taken; the full buffer could not be sent
            expected[event_id] = units
            if rng.random() < 0.03:
                gave_up += app_flush(client)
        gave_up += app_flush(client)
    finally:
        flaky.join()
        client.close()
    return {"expected": expected, "gave_up": gave_up, "batch_size": batch_size,
            "counts": flaky.counts, "late": flaky.late_outcomes}  # fmt: skip


def test_random_failures_never_duplicate_nor_lose(ledger: Ledger) -> None:
    m = deployer(ledger)
    expected: dict[str, int] = {}
    counts: collections.Counter[str] = collections.Counter()
    late: collections.Counter[str] = collections.Counter()
    gave_up, sizes = 0, []
    started = time.perf_counter()
    for seed in SEEDS:
        run = one_run(ledger, m, seed)
        expected.update(run["expected"])
        counts.update(run["counts"])
        late.update(run["late"])
        gave_up += run["gave_up"]
        sizes.append(run["batch_size"])
    e, u = events_table.c, usage_table.c
    with ledger.engine.connect() as conn:
        ids = collections.Counter(
            r.id for r in conn.execute(select(e.id).where(e.type == "usage.recorded"))
        )
        rows, units = conn.execute(select(func.count(), func.sum(u.units))).one()
    assert set(ids) == set(expected), (
        f"{len(set(expected) - set(ids))} events lost, {len(set(ids) - set(expected))} unknown"
    )
    assert set(ids.values()) == {1}, "an event is in the log more than once"
    assert rows == len(expected) and units == sum(expected.values())
    report = ledger.verify()
    attempts = sum(counts[k] for k in FAILURES)
    FIGURES.append(
        f"retries ({ledger.dialect}): {len(SEEDS)} seeded runs, {len(expected):,} events in "
        f"batches of {sizes}; {attempts:,} sends: "
        + ", ".join(f"{k} {counts[k]}" for k in FAILURES)
        + f"; ledger answered {counts['duplicate no-op']} duplicate no-ops and "
        f"{counts['partial duplicate']} partial duplicates; the client gave up {gave_up} times "
        f"and the application sent again; late requests: {dict(late)}; in the log: "
        f"{len(ids):,} ids each once, {rows:,} usage rows, units as sent; verify ok "
        f"(log of {report.size:,}); {time.perf_counter() - started:.1f} s"
    )


class Down:
    """A transport that refuses every send while `down` is set."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.down = True

    def append(self, batch: SignedBatch) -> AppendResult:
        if self.down:
            raise StoreError("database error: connection refused")
        return self.ledger.append(batch)


@pytest.mark.parametrize("resent", ["while unsent", "after a failed send"])
def test_resending_a_buffered_event_is_a_no_op(ledger: Ledger, resent: str) -> None:
    """docs/sdk.md, "Your own ids": to make a retry of your own harmless, keep the time of the
    request with its id and pass both: "the retry is then the very same event, and a no-op".
    A service whose caller retries a request (say after a timeout, or after the database was down
    and the service's flush failed) records the same event while the first copy is still in the
    client's buffer. That must be a no-op too, and must cost no other request's event."""
    m = deployer(ledger)
    transport = Down(ledger)
    at = "2026-11-29T10:00:01.000000Z"
    client = Client(transport, "dep", m.keys["dep"], max_delay=0, retries=0)
    try:
        for i in (1, 2, 3):
            client.record_usage("model-1", 3 + i, "0.35", id=f"req-{i}", occurred_at=at)
        if resent == "after a failed send":
            with pytest.raises(StoreError):
                client.flush()
        client.record_usage("model-1", 4, "0.35", id="req-1", occurred_at=at)  # req-1 again
        transport.down = False
        client.flush()
    finally:
        transport.down = False
        client.close()
    found = ledger.find_events(["req-1", "req-2", "req-3"])
    assert sorted(found) == ["req-1", "req-2", "req-3"]
    assert ledger.usage_count() == 3
