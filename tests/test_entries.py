"""The SDK's own uses travel as `UsageEntry` tuples, not models: the same bytes, rows and
answers as the models, checked as strictly, and nothing for the garbage collector to track."""

from __future__ import annotations

import gc
import hashlib
import pickle
from typing import Any

import pytest
import rfc8785
from helpers import Market, outcome, usage_dict
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from ledger import Client, InvalidEvent, KeyPair, Ledger, RuleViolation, SignedBatch
from ledger import schema as s
from ledger.audit import EventRecord
from ledger.canonical import plain
from ledger.events import (
    Event,
    UsageMaker,
    UsageRecorded,
    body_dict,
    check_entries,
    parse_event,
    signed_bytes,
)
from ledger.values import now_timestamp, uuid7

names = st.one_of(
    st.sampled_from(["model-1", "m", "x" * 128, "x" * 129, "caf\u00e9", 'a"b', "a\\b", "", "*"]),
    st.text(max_size=20),
)
units_values = st.one_of(st.integers(-2, 2**53 + 1), st.booleans(), st.floats(allow_nan=False))
revenues = st.one_of(st.none(), st.integers(-1, 2**53 + 1), st.booleans())


@settings(max_examples=800, deadline=None)
@given(names, names, units_values, revenues, st.one_of(st.none(), names))
def test_an_entry_is_the_event_the_models_make(
    actor: str, asset: str, units: Any, revenue: Any, grant: Any
) -> None:
    """For an id and time the SDK made, `UsageMaker.entry` refuses what the models refuse
    (naming the same field), declines (None) what is not plain, and otherwise gives a tuple
    whose event, bytes and signed batch are the models' to the byte."""
    event_id, when = uuid7(), now_timestamp()
    event = usage_dict(event_id, actor, when, asset, units, revenue, grant)
    slow = outcome(lambda: parse_event(event))
    maker = UsageMaker(actor)

    def sdk() -> Any:  # what record_usage does: an entry, or else the model
        entry = maker.entry(event_id, when, asset, units, revenue, grant)
        if entry is not None:
            return entry
        return maker(event_id, when, asset, units, revenue, grant, fresh=True)

    made = [outcome(sdk) for _ in range(2)]  # asked twice: the second answer is remembered
    if isinstance(slow, tuple):
        assert made == [slow, slow]
        return
    assert made[0] == made[1]
    entry = made[0]
    if type(entry) is not tuple:  # not plain: the model, as the models make it
        assert entry == slow
        assert not all(plain(x) for x in (actor, asset, grant or ""))
        return
    key = KeyPair.generate()
    compact = SignedBatch.sign(actor, key, [entry])
    models = SignedBatch.sign(actor, key, [slow])
    assert compact.events == (slow,)
    assert compact.encoded == models.encoded
    assert compact.hashes == models.hashes
    assert compact.signature == models.signature
    assert compact == models
    body_bytes, head, tail = compact.encoded[0]
    assert head + tail == signed_bytes(slow) == rfc8785.dumps(
        {"id": event_id, "type": "usage.recorded", "actor": actor, "occurred_at": when,
         "body": body_dict(slow)})  # fmt: skip
    assert body_bytes == rfc8785.dumps(body_dict(slow))


def _entries(n: int, text: str = '{"asset":"model-1","units":3}') -> list[tuple[str, str, str]]:
    return [(uuid7(), now_timestamp(), text) for _ in range(n)]


GOOD_ID = "019ad0c8-8a2b-7c3d-9e4f-0123456789ab"
GOOD_TIME = "2026-11-29T12:00:00.123456Z"
BAD_ENTRIES = [
    ((GOOD_ID.upper(), GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    ((GOOD_ID[:14] + "4" + GOOD_ID[15:], GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    ((GOOD_ID[:19] + "c" + GOOD_ID[20:], GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    ((GOOD_ID[:9] + "-" + GOOD_ID[10:], GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    ((GOOD_ID + "0", GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    (("edvex:settlement:run-1", GOOD_TIME, '{"asset":"a","units":1}'), "id"),
    ((GOOD_ID, GOOD_TIME.replace("T", "t"), '{"asset":"a","units":1}'), "occurred_at"),
    ((GOOD_ID, "2026-02-30T00:00:00.000000Z", '{"asset":"a","units":1}'), "occurred_at"),
    ((GOOD_ID, "1969-12-31T23:59:59.999999Z", '{"asset":"a","units":1}'), "occurred_at"),
    ((GOOD_ID, "2026-11-29T24:00:00.000000Z", '{"asset":"a","units":1}'), "occurred_at"),
    ((GOOD_ID, "2026-11-29T12:00:00Z", '{"asset":"a","units":1}'), "occurred_at"),
    ((GOOD_ID, GOOD_TIME, '{"units":1,"asset":"a"}'), "body"),  # keys out of order
    ((GOOD_ID, GOOD_TIME, '{"asset":"a", "units":1}'), "body"),  # not canonical
    ((GOOD_ID, GOOD_TIME, '{"asset":"a","units":-1}'), "body"),
    ((GOOD_ID, GOOD_TIME, '{"asset":"a","units":1.0}'), "body"),
    ((GOOD_ID, GOOD_TIME, '{"asset":"a","units":1,"x":1}'), "body"),
    ((GOOD_ID, GOOD_TIME, '{"asset":"a\\"b","units":1}'), "body"),  # a string not plain
    ((GOOD_ID, GOOD_TIME, '{"asset":"caf\u00e9","units":1}'), "body"),
    ((GOOD_ID, GOOD_TIME, '{"asset":"","units":1}'), "body"),
    ((GOOD_ID, GOOD_TIME, "not json"), "body"),
    ((GOOD_ID, GOOD_TIME), "events"),
    ((GOOD_ID, GOOD_TIME, '{"asset":"a","units":1}', "more"), "events"),
    ((GOOD_ID, 5, '{"asset":"a","units":1}'), "events"),
    ((GOOD_ID, GOOD_TIME, b'{"asset":"a","units":1}'), "body"),
]


@pytest.mark.parametrize(("bad", "field"), BAD_ENTRIES)
def test_check_entries_refuses_what_the_models_would_not_make(
    bad: tuple[Any, ...], field: str
) -> None:
    good = _entries(3)
    with pytest.raises(InvalidEvent) as caught:
        check_entries([*good, bad, *_entries(2)])  # type: ignore[list-item]
    assert caught.value.field == field
    if field != "events":
        assert caught.value.event_id == bad[0]  # the entry named is the one that failed
    assert list(check_entries(good)) == [good[0][2]]


def _usage_market(ledger: Ledger) -> Market:
    m = Market(ledger)
    m.party("dep", "deployer")
    m.do("dep", "register_asset", "model-1", "model")
    return m


@pytest.mark.parametrize(("bad", "field"), BAD_ENTRIES[::4])
def test_the_ledger_refuses_a_bad_entry_and_changes_nothing(
    ledger: Ledger, bad: tuple[Any, ...], field: str
) -> None:
    m = _usage_market(ledger)
    before = ledger.head()
    batch = SignedBatch("dep", m.keys["dep"].public_hex, [*_entries(2), bad], b"")
    with pytest.raises(InvalidEvent) as caught:
        ledger.append(batch)
    assert caught.value.field == field
    assert ledger.head() == before


def _as_models(batch: SignedBatch) -> list[Event]:
    """The uses of a batch of `dep`'s as models with ids of their own, to append beside it."""
    return [
        parse_event({"id": uuid7(), "type": "usage.recorded", "actor": "dep",
                     "occurred_at": e.occurred_at, "body": body_dict(e)})
        for e in batch.events
    ]  # fmt: skip


def test_a_batch_of_entries_stores_the_reference_bytes_and_rows(ledger: Ledger) -> None:
    """Entries and the same uses as models, appended apiece: every stored body, hash and leaf
    is RFC 8785 of the model, and the two batches give the same usage rows."""
    m = _usage_market(ledger)
    texts = ['{"asset":"model-1","units":3}', '{"asset":"model-1","revenue":250000,"units":1}']
    entries = [(uuid7(), now_timestamp(), texts[i % 2]) for i in range(40)]
    compact = SignedBatch.sign("dep", m.keys["dep"], entries)
    assert all(type(e) is tuple for e in compact.entries)
    as_models = _as_models(compact)
    first = ledger.append(compact)
    second = ledger.append(SignedBatch.sign("dep", m.keys["dep"], as_models))
    stored = {r.id: r for r in ledger.records() if isinstance(r, EventRecord)}
    for event in (*compact.events, *as_models):
        record = stored[event.id]
        assert (record.type, record.actor, record.occurred_at) == (
            "usage.recorded", "dep", event.occurred_at)  # fmt: skip
        assert record.body == body_dict(event)
        assert record.body_text == rfc8785.dumps(body_dict(event)).decode()
        assert record.hash == hashlib.sha256(signed_bytes(event)).digest()
    with ledger.engine.connect() as conn:
        u = s.usage.c
        rows = conn.execute(select(u.seq, u.asset, u.units, u.revenue).order_by(u.seq)).all()
    by_seq = {r.seq: (r.asset, r.units, r.revenue) for r in rows}
    assert [by_seq[q] for q in first.seqs] == [by_seq[q] for q in second.seqs]
    assert len(first.seqs) == 40
    assert ledger.verify().size == ledger.head().size
    # the same batch again is a no-op with the first answer, as for models
    again = ledger.append(compact)
    assert again.duplicate and again.seqs == first.seqs


def _granting_market(ledger: Ledger) -> Market:
    """dep owns model-1; lab owns model-2, which dep may use under g-2, and model-3, which no
    grant lets dep use."""
    m = _usage_market(ledger)
    m.party("lab", "developer")
    m.do("lab", "register_asset", "model-2", "model")
    m.do("lab", "register_asset", "model-3", "model")
    m.do("lab", "grant_consent", "model-2", "dep", ["infer"], per_unit="0.01", grant="g-2")
    return m


def _texts_of(assets: list[str]) -> list[str]:
    return [f'{{"asset":"{a}","units":{1 + i % 3}}}' for i, a in enumerate(assets)]


def test_entries_are_checked_by_the_rules_as_models_are(ledger: Ledger) -> None:
    """Uses of an owned asset and of a granted one, as tuples and as models: the same rows,
    each use's grant resolved (and its group numbered) alike."""
    m = _granting_market(ledger)
    texts = _texts_of(["model-1", "model-2", "model-2", "model-1", "model-2"] * 4)
    compact = SignedBatch.sign("dep", m.keys["dep"], [(uuid7(), now_timestamp(), t) for t in texts])
    as_models = _as_models(compact)
    first = ledger.append(compact)
    second = ledger.append(SignedBatch.sign("dep", m.keys["dep"], as_models))
    u = s.usage.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(u.seq, u.asset, u.actor, u.grant, u.units, u.group_id)).all()
    by_seq = {r.seq: tuple(r)[1:] for r in rows}
    made = [by_seq[q] for q in first.seqs]
    assert made == [by_seq[q] for q in second.seqs]
    assert {(r[0], r[2]) for r in made} == {("model-1", None), ("model-2", "g-2")}
    assert [r[3] for r in made] == [1 + i % 3 for i in range(len(texts))]


@pytest.mark.parametrize("as_tuples", [True, False], ids=["tuples", "models"])
def test_a_use_no_grant_allows_is_refused_by_the_first_that_breaks_the_rule(
    ledger: Ledger, as_tuples: bool
) -> None:
    """model-3 first appears at the sixth use, then again later: the refusal names the sixth,
    as tuples or as models, and nothing is appended."""
    m = _granting_market(ledger)
    assets = ["model-1", "model-2"] * 2 + ["model-1", "model-3"] + ["model-2", "model-3"] * 2
    entries = [(uuid7(), now_timestamp(), t) for t in _texts_of(assets)]
    batch = SignedBatch.sign("dep", m.keys["dep"], entries)
    if not as_tuples:
        batch = SignedBatch.sign("dep", m.keys["dep"], list(batch.events))
    before = ledger.head()
    with pytest.raises(RuleViolation) as caught:
        ledger.append(batch)
    assert caught.value.event_id == entries[5][0]
    assert caught.value.rule == "live-use-grant"
    assert ledger.head() == before


def test_the_sdk_buffers_its_uses_as_untracked_tuples(ledger: Ledger) -> None:
    m = _usage_market(ledger)
    with m.client("dep", batch_size=1000) as c:
        ids = [c.record_usage("model-1", 1 + i % 5, "0.01") for i in range(50)]
        gc.collect()
        waiting = list(c._buffer.values())
        assert [type(w) for w in waiting] == [tuple] * 50
        assert not any(gc.is_tracked(w) for w in waiting)
        # a request retried with the id and time it got is the same use: a no-op
        entry = c._buffer[ids[0]]
        assert c.record_usage("model-1", 1, "0.01", id=ids[0], occurred_at=entry[1]) == ids[0]
        with pytest.raises(InvalidEvent, match="different event"):
            c.record_usage("model-1", 2, "0.01", id=ids[0], occurred_at=entry[1])
    assert m.size() == 3 + 50


def test_uses_that_are_not_plain_go_as_models(ledger: Ledger) -> None:
    m = Market(ledger)
    m.party("dep", "deployer")
    m.do("dep", "register_asset", "mod\u00e8le", "model")
    with m.client("dep", batch_size=1000) as c:
        c.record_usage("mod\u00e8le", 2)
        c.record_usage("mod\u00e8le", 3)
        assert [type(w) for w in c._buffer.values()] == [UsageRecorded, UsageRecorded]
    stored = [r for r in ledger.records() if isinstance(r, EventRecord)]
    assert [r.body["units"] for r in stored[-2:]] == [2, 3]
    assert ledger.verify().size == ledger.head().size


def test_a_client_sending_entries_to_another_transport_sees_models_there() -> None:
    """A transport that forwards batches reads `events` as before: models, made on demand."""
    seen: list[SignedBatch] = []

    class Forward:
        def append(self, batch: SignedBatch) -> None:
            seen.append(batch)

    key = KeyPair.generate()
    with Client(Forward(), "dep", key, max_delay=0, batch_size=10) as c:  # type: ignore[arg-type]
        ids = [c.record_usage("model-1", i + 1) for i in range(25)]
    assert [len(b.entries) for b in seen] == [10, 10, 5]
    events = [e for b in seen for e in b.events]
    assert [e.id for e in events] == ids
    assert all(type(e) is UsageRecorded and e.actor == "dep" for e in events)
    assert [e.body.units for e in events] == list(range(1, 26))  # type: ignore[union-attr]
    for b in seen:
        assert b.hashes == SignedBatch.sign("dep", key, b.events).hashes


def test_a_batch_of_entries_is_immutable_and_pickles_whole() -> None:
    key = KeyPair.generate()
    batch = SignedBatch.sign("dep", key, _entries(3))
    with pytest.raises(AttributeError, match="immutable"):
        batch.actor = "mallory"  # type: ignore[misc]
    again = pickle.loads(pickle.dumps(batch))
    assert again == batch
    assert (again.entries, again.digest, again.signature) == (
        batch.entries, batch.digest, batch.signature)  # fmt: skip
