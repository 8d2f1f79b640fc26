"""The SDK, `ledger.Client` (DESIGN.md, "Public interfaces"): batching by count and by time,
flushing on close, retries that never duplicate, and typed errors naming the offending event."""

from __future__ import annotations

import collections
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import Market

from ledger import (
    AppendResult,
    Client,
    InvalidEvent,
    KeyPair,
    Ledger,
    RuleViolation,
    SignedBatch,
    StoreError,
    write_key,
)
from ledger.audit import EventRecord


def deployer_market(ledger: Ledger) -> Market:
    """c1 owns item-1 and grants deployer dep the use of it."""
    m = Market(ledger)
    m.party("c1", "creator")
    m.party("dep", "deployer")
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c1", "grant_consent", "item-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    return m


def id_counts(ledger: Ledger) -> collections.Counter[str]:
    return collections.Counter(r.id for r in ledger.records() if isinstance(r, EventRecord))


def wait_until(condition: Callable[[], bool], timeout: float = 2.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# --- batching -----------------------------------------------------------------------------------


def test_batches_by_count(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    before = ledger.head().batches
    with m.client("dep", batch_size=100) as client:
        for i in range(250):
            client.record_usage("item-1", i)
        assert ledger.head().batches - before == 2  # two full batches sent, 50 events buffered
        assert ledger.usage_count() == 200
    assert ledger.head().batches - before == 3
    assert ledger.usage_count() == 250


def test_batches_by_time(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    before = ledger.head().batches
    client = m.client("dep", max_delay=0.2)
    try:
        ids = [client.record_usage("item-1", 1) for _ in range(5)]
        assert wait_until(lambda: ledger.usage_count() == 5, timeout=1.0)
        assert ledger.head().batches - before == 1
        assert all(id_counts(ledger)[i] == 1 for i in ids)
    finally:
        client.close()
    assert ledger.head().batches - before == 1


def test_close_flushes(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    size = ledger.head().size
    with m.client("dep", max_delay=60) as client:
        ids = [client.record_usage("item-1", 3, "0.10") for _ in range(3)]
        assert ledger.head().size == size  # buffered, nothing sent yet
    assert ledger.head().size == size + 3
    assert all(id_counts(ledger)[i] == 1 for i in ids)


def test_open_from_a_url_and_key_file_flushes_on_close(
    ledger: Ledger, db_url: str, tmp_path: Path
) -> None:
    m = deployer_market(ledger)
    key_file = tmp_path / "keys" / "dep.key"
    write_key(key_file, m.keys["dep"])
    with Client.open(db_url, party="dep", key=key_file, max_delay=0) as client:
        client.record_usage("item-1", units=1200, revenue="0.35")
    assert ledger.usage_count() == 1


# --- retries ------------------------------------------------------------------------------------


class LostReplies:
    """Appends for real, then loses the reply: the first `failures` attempts raise StoreError."""

    def __init__(self, ledger: Ledger, failures: int) -> None:
        self.ledger = ledger
        self.failures = failures
        self.attempts = 0

    def append(self, batch: SignedBatch) -> AppendResult:
        self.attempts += 1
        result = self.ledger.append(batch)
        if self.failures:
            self.failures -= 1
            raise StoreError("connection lost after commit")
        return result


class Unreachable:
    """The first `failures` attempts raise StoreError before anything reaches the ledger."""

    def __init__(self, ledger: Ledger, failures: int) -> None:
        self.ledger = ledger
        self.failures = failures
        self.attempts = 0

    def append(self, batch: SignedBatch) -> AppendResult:
        self.attempts += 1
        if self.failures:
            self.failures -= 1
            raise StoreError("connection refused")
        return self.ledger.append(batch)


@pytest.mark.parametrize("transport", [LostReplies, Unreachable], ids=["lost-reply", "unreachable"])
def test_retries_never_duplicate(ledger: Ledger, transport: type[LostReplies]) -> None:
    m = deployer_market(ledger)
    size, batches = ledger.head().size, ledger.head().batches
    flaky = transport(ledger, failures=2)
    with Client(flaky, "dep", m.keys["dep"], batch_size=4, max_delay=0, backoff=0.001) as client:
        ids = [client.record_usage("item-1", i) for i in range(10)]
    assert flaky.attempts == 3 + 2  # three batches, two of the attempts failed
    counts = id_counts(ledger)
    assert all(counts[i] == 1 for i in ids)
    assert ledger.head().size == size + 10
    assert ledger.head().batches == batches + 3
    assert ledger.usage_count() == 10


def test_events_stay_buffered_when_retries_run_out(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    size = ledger.head().size
    flaky = LostReplies(ledger, failures=2)
    client = Client(flaky, "dep", m.keys["dep"], max_delay=0, retries=1, backoff=0.001)
    ids = [client.record_usage("item-1", i) for i in range(5)]
    with pytest.raises(StoreError):
        client.flush()  # committed, but the client cannot know: the events stay buffered
    client.close()  # sends them again; the ledger recognises them
    assert flaky.attempts == 3
    assert all(id_counts(ledger)[i] == 1 for i in ids)
    assert ledger.head().size == size + 5


# --- rejections ---------------------------------------------------------------------------------


def test_rejected_event_raises_with_its_id(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    before = (ledger.head().size, ledger.usage_count())
    client = m.client("dep")
    client.record_usage("item-1", 1, id="fine-1")
    client.record_usage("no-such-item", 1, id="offender")
    client.record_usage("item-1", 1, id="fine-2")
    with pytest.raises(RuleViolation) as caught:
        client.flush()
    assert caught.value.event_id == "offender"
    assert caught.value.field == "body.asset"
    assert "event 'offender'" in str(caught.value)
    assert (ledger.head().size, ledger.usage_count()) == before  # the batch went whole or not
    client.record_usage("item-1", 1, id="fine-3")  # the client goes on after a rejection
    client.close()
    assert set(id_counts(ledger)) >= {"fine-3"}
    assert not {"fine-1", "fine-2", "offender"} & set(id_counts(ledger))


def test_rejection_found_by_a_timed_flush_raises_on_the_next_call(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    size = ledger.head().size
    client = m.client("dep", max_delay=0.05)
    try:
        client.record_usage("item-1", 1, grant="no-such-grant", id="offender")
        time.sleep(0.5)  # the timer sends the batch and keeps the error for the caller
        with pytest.raises(RuleViolation) as caught:
            client.record_usage("item-1", 1, id="next")
        assert caught.value.event_id == "offender"
        assert ledger.head().size == size
    finally:
        client.close()


def test_malformed_event_is_refused_before_sending(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    size = ledger.head().size
    with m.client("dep") as client:
        with pytest.raises(InvalidEvent) as caught:
            client.record_usage("item-1", -1, id="negative")
        assert (caught.value.event_id, caught.value.field) == ("negative", "body.units")
        assert "event 'negative'" in str(caught.value)
        client.record_usage("item-1", 1)  # the client goes on
    assert ledger.head().size == size + 1


@pytest.mark.parametrize(
    ("method", "args", "field"),
    [
        pytest.param("record_usage", ("item-1", 1, "0.0000001"), "body.revenue",
                     id="revenue-with-7-decimals"),
        pytest.param("record_usage", ("item-1", 1, "-1"), "body.revenue", id="negative-revenue"),
        pytest.param("record_usage", ("item-1", 1, 1.5), "body.revenue", id="float-revenue"),
        pytest.param("grant_consent", ("item-1", "c2", ["infer"]), "body.terms.minimum",
                     id="minimum-with-7-decimals"),
    ],
)  # fmt: skip
def test_malformed_amount_is_an_invalid_event(
    method: str, args: tuple[object, ...], field: str
) -> None:
    """DESIGN.md "Bad input": every rejection is a typed error naming the event and field."""
    client = Client(NoLedger(), "dep", KeyPair.generate(), max_delay=0)
    kwargs: dict[str, object] = {"id": "bad-amount"}
    if method == "grant_consent":
        kwargs["minimum"] = "0.0000001"
    with client, pytest.raises(InvalidEvent) as caught:
        getattr(client, method)(*args, **kwargs)
    assert (caught.value.event_id, caught.value.field) == ("bad-amount", field)
    assert "event 'bad-amount'" in str(caught.value)


class NoLedger:
    """A transport for tests in which nothing may be sent."""

    def append(self, batch: SignedBatch) -> AppendResult:
        raise AssertionError("nothing should have been sent")


def test_rotate_key_switches_the_signing_key(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    new = KeyPair.generate()
    with m.client("dep") as client:
        client.record_usage("item-1", 1)
        client.rotate_key(new)
        client.record_usage("item-1", 2)
    assert ledger.party("dep")["public_key"] == new.public_hex  # type: ignore[index]
    assert ledger.usage_count() == 2
    ledger.verify()
