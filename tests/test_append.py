"""The store (DESIGN.md, "The log"): idempotent and atomic appends, a gapless log, append-only
tables, verification, rebuild, proofs and checkpoints, on SQLite and PostgreSQL."""

from __future__ import annotations

import collections
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy.exc
from helpers import Market, ts, worked_example
from sqlalchemy import select, text

from ledger import (
    Client,
    ConflictError,
    IntegrityError,
    KeyPair,
    Ledger,
    PartialDuplicate,
    ProofInvalid,
    RuleViolation,
    SignatureInvalid,
    SignedBatch,
    StoreError,
)
from ledger import schema as s
from ledger.audit import BatchRecord, EventRecord
from ledger.checkpoint import verify_checkpoint
from ledger.events import Event, leaf_bytes, parse_event
from ledger.merkle import leaf_hash, root_from_leaves, verify_consistency, verify_inclusion

# --- helpers ------------------------------------------------------------------------------------


def dump(ledger: Ledger, tables: tuple[Any, ...]) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of `tables`, ordered by primary key."""
    out = {}
    with ledger.engine.connect() as conn:
        for table in tables:
            q = select(table).order_by(*table.primary_key.columns)
            out[table.name] = [tuple(r) for r in conn.execute(q)]
    return out


LOG_TABLES = (s.events, s.batches, s.tree_nodes, s.checkpoints)


def snapshot(ledger: Ledger) -> dict[str, Any]:
    head = ledger.head()
    return {
        "head": (head.size, head.batches, head.root),
        "usage_count": ledger.usage_count(),
        "log": dump(ledger, LOG_TABLES),
        "projections": dump(ledger, s.PROJECTIONS),
    }


def deployer_market(ledger: Ledger) -> Market:
    """c1 owns item-1 and grants deployer dep the use of it."""
    m = Market(ledger)
    m.party("c1", "creator")
    m.party("dep", "deployer")
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c1", "grant_consent", "item-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    return m


OCCURRED = ts()  # one client timestamp, so that re-made events have the same content


def usage_events(n: int, prefix: str = "u", units: int = 1, start: int = 0) -> list[Event]:
    return [
        parse_event(
            {
                "id": f"{prefix}-{i}",
                "type": "usage.recorded",
                "actor": "dep",
                "occurred_at": OCCURRED,
                "body": {"asset": "item-1", "units": units},
            }
        )  # fmt: skip
        for i in range(start, start + n)
    ]


def sign(m: Market, events: list[Event], actor: str = "dep") -> SignedBatch:
    return SignedBatch.sign(actor, m.keys[actor], events)


def event_records(ledger: Ledger) -> list[EventRecord]:
    return [r for r in ledger.records() if isinstance(r, EventRecord)]


def id_counts(ledger: Ledger) -> collections.Counter[str]:
    return collections.Counter(r.id for r in event_records(ledger))


# --- idempotency --------------------------------------------------------------------------------


def test_resubmitting_a_batch_of_10000_is_a_no_op(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    batch = sign(m, usage_events(10_000))
    first = ledger.append(batch)
    size = ledger.head().size
    assert not first.duplicate
    assert first.seqs == tuple(range(size - 9_999, size + 1))
    assert ledger.usage_count() == 10_000

    again = ledger.append(batch)
    assert again.duplicate
    assert again.seqs == first.seqs
    assert again.recorded_at == first.recorded_at
    assert ledger.usage_count() == 10_000
    assert ledger.head().size == size

    resigned = ledger.append(sign(m, usage_events(10_000)[::-1]))  # same events, new order
    assert resigned.duplicate
    assert resigned.seqs == first.seqs[::-1]
    assert ledger.usage_count() == 10_000


def test_same_id_with_different_content_is_a_conflict(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    first = ledger.append(sign(m, usage_events(10)))
    before = snapshot(ledger)
    changed = usage_events(1, units=2, start=5)  # id u-5, other units
    with pytest.raises(ConflictError) as caught:
        ledger.append(sign(m, changed))
    assert caught.value.event_id == "u-5"
    assert caught.value.seq == first.seqs[5]
    assert "event 'u-5'" in str(caught.value)
    assert "field 'id'" in str(caught.value)
    with pytest.raises(ConflictError):  # also when mixed with new events
        ledger.append(sign(m, usage_events(3, prefix="new") + changed))
    assert snapshot(ledger) == before


def test_batch_mixing_known_and_new_ids_is_refused_whole(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    first = ledger.append(sign(m, usage_events(5)))
    before = snapshot(ledger)
    mixed = usage_events(5, prefix="n") + usage_events(5)
    with pytest.raises(PartialDuplicate) as caught:
        ledger.append(sign(m, mixed))
    assert caught.value.known == {f"u-{i}": seq for i, seq in enumerate(first.seqs)}
    assert snapshot(ledger) == before


def test_client_re_signs_a_partly_known_batch(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    ledger.append(sign(m, usage_events(5)))
    size = ledger.head().size
    mixed = usage_events(3, prefix="n") + usage_events(5) + usage_events(3, prefix="n", start=3)
    with m.client("dep") as client:
        results = client.append_events(mixed)
    assert [r.seqs for r in results] == [tuple(range(size + 1, size + 7))]
    counts = id_counts(ledger)
    assert all(counts[e.id] == 1 for e in mixed)
    assert ledger.usage_count() == 11
    assert ledger.head().size == size + 6


# --- atomicity ----------------------------------------------------------------------------------


def test_a_batch_breaking_a_rule_at_event_500_appends_nothing(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    m.do("c1", "register_asset", "item-2", "data")  # dep has no grant on item-2
    ledger.append(sign(m, usage_events(10, prefix="before")))
    before = snapshot(ledger)
    events = usage_events(1000)
    bad = parse_event({**events[499].model_dump(), "body": {"asset": "item-2", "units": 1}})
    events[499] = bad
    with pytest.raises(RuleViolation) as caught:
        ledger.append(sign(m, events))
    assert caught.value.event_id == "u-499"
    assert snapshot(ledger) == before
    # the refused batch left no gap: the next batch takes the next seqs
    result = ledger.append(sign(m, usage_events(3, prefix="after")))
    size = before["head"][0]
    assert result.seqs == (size + 1, size + 2, size + 3)


# --- seq and recorded_at ------------------------------------------------------------------------


def test_seq_is_gapless_and_recorded_at_never_decreases(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    for n in (1, 7, 250, 2, 40):
        ledger.append(sign(m, usage_events(n, prefix=f"b{n}")))
    records = list(ledger.records())
    events = [r for r in records if isinstance(r, EventRecord)]
    batches = [r for r in records if isinstance(r, BatchRecord)]
    head = ledger.head()
    assert [e.seq for e in events] == list(range(1, head.size + 1))
    assert [b.batch for b in batches] == list(range(1, head.batches + 1))
    stamps = [e.recorded_at for e in events]
    assert stamps == sorted(stamps)
    assert stamps[-1] == head.recorded_at
    for b in batches:
        inside = [e for e in events if b.first_seq <= e.seq <= b.last_seq]
        assert {e.batch for e in inside} == {b.batch}
        assert {e.recorded_at for e in inside} == {inside[0].recorded_at}
    assert [b.first_seq for b in batches[1:]] == [b.last_seq + 1 for b in batches[:-1]]


def test_recorded_at_holds_when_the_clock_goes_back(ledger: Ledger, db_url: str) -> None:
    m = Market(ledger)
    m.party("c1")
    last = ledger.head().recorded_at
    past = Ledger.open(db_url, clock=lambda: datetime(2001, 1, 1, tzinfo=UTC))
    try:
        key = KeyPair.generate()
        with Client(past, "late", key, max_delay=0) as client:
            client.register_party("creator")
        assert past.head().recorded_at == last
    finally:
        past.close()
    stamps = [e.recorded_at for e in event_records(ledger)]
    assert stamps == sorted(stamps)
    ledger.verify()


def test_concurrent_appends_stay_gapless(ledger: Ledger) -> None:
    m = deployer_market(ledger)
    for name in ("d1", "d2", "d3"):
        m.party(name, "deployer")
        m.do("c1", "grant_consent", "item-1", name, ["infer"], per_unit="0.001")
    errors: list[BaseException] = []

    def work(name: str) -> None:
        try:
            with m.client(name, batch_size=20) as client:
                for i in range(100):
                    client.record_usage("item-1", i)
        except BaseException as e:  # reported below, in the test's thread
            errors.append(e)

    threads = [threading.Thread(target=work, args=(n,)) for n in ("dep", "d1", "d2", "d3")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert ledger.usage_count() == 400
    events = event_records(ledger)
    assert [e.seq for e in events] == list(range(1, ledger.head().size + 1))
    ledger.verify()


# --- append-only tables -------------------------------------------------------------------------


def full_market(ledger: Ledger, operator_key: KeyPair) -> Market:
    """The worked example, more usage (over 16 events, so tree nodes are stored), a checkpoint."""
    m = Market(ledger)
    worked_example(m)
    with m.client("dev") as c:
        for i in range(10):
            c.record_usage("M", i, "0.5")
    ledger.checkpoint(operator_key)
    return m


GUARDED = [
    pytest.param("UPDATE events SET body = '{}' WHERE seq = 2", id="update-events-body"),
    pytest.param("UPDATE events SET recorded_at = '2001-01-01T00:00:00.000000Z'",
                 id="update-events-recorded-at"),
    pytest.param("UPDATE events SET seq = seq", id="update-events-unchanged"),
    pytest.param("UPDATE events SET hash = NULL WHERE seq = 1", id="update-events-hash-to-null"),
    pytest.param("DELETE FROM events WHERE seq = (SELECT MAX(seq) FROM events)",
                 id="delete-last-event"),
    pytest.param("UPDATE batches SET signature = digest", id="update-batches-signature"),
    pytest.param("UPDATE batches SET key = NULL WHERE batch = 1", id="update-batches-key-to-null"),
    pytest.param("DELETE FROM batches WHERE batch = 1", id="delete-first-batch"),
    pytest.param("UPDATE tree_nodes SET hash = hash", id="update-tree-nodes-hash"),
    pytest.param("DELETE FROM tree_nodes", id="delete-tree-nodes"),
    pytest.param("UPDATE checkpoints SET note = 'forged'", id="update-checkpoints-note"),
    pytest.param("UPDATE checkpoints SET root = NULL", id="update-checkpoints-root-to-null"),
    pytest.param("DELETE FROM checkpoints", id="delete-checkpoints"),
]  # fmt: skip


@pytest.mark.parametrize("statement", GUARDED)
def test_database_refuses_changes_to_log_tables(
    ledger: Ledger, operator_key: KeyPair, statement: str
) -> None:
    full_market(ledger, operator_key)
    before = dump(ledger, LOG_TABLES)
    assert all(before.values()), "every log table has rows to change"
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"), ledger.engine.begin() as c:
        c.execute(text(statement))
    assert dump(ledger, LOG_TABLES) == before
    ledger.verify()


@pytest.mark.parametrize("table", ["events", "batches", "tree_nodes", "checkpoints"])
def test_database_refuses_emptying_log_tables(
    ledger: Ledger, operator_key: KeyPair, table: str
) -> None:
    full_market(ledger, operator_key)
    before = dump(ledger, LOG_TABLES)
    statement = f"TRUNCATE {table}" if ledger.dialect == "postgresql" else f"DELETE FROM {table}"
    with pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only"), ledger.engine.begin() as c:
        c.execute(text(statement))
    assert dump(ledger, LOG_TABLES) == before


# --- verify -------------------------------------------------------------------------------------


def test_verify_passes_on_a_fresh_market(ledger: Ledger, operator_key: KeyPair) -> None:
    full_market(ledger, operator_key)
    report = ledger.verify()
    head = ledger.head()
    assert (report.size, report.batches, report.root) == (head.size, head.batches, head.root)


def flip_one_byte(body: str) -> str:
    """`body` with its last letter or digit replaced by another of its kind."""
    i = max(i for i, ch in enumerate(body) if ch.isalnum())
    ch = body[i]
    new = ("1" if ch == "0" else "0") if ch.isdigit() else ("b" if ch == "a" else "a")
    return body[:i] + new + body[i + 1 :]


def drop_event_guard(ledger: Ledger) -> None:
    with ledger.engine.begin() as conn:
        if ledger.dialect == "postgresql":
            conn.execute(text("DROP TRIGGER events_append_only ON events"))
        else:
            conn.execute(text("DROP TRIGGER events_no_update"))


@pytest.mark.parametrize(
    "pick",
    [
        pytest.param(lambda size: 1, id="first-event"),
        pytest.param(lambda size: size // 2, id="middle-event"),
        pytest.param(lambda size: size, id="last-event"),
    ],
)
def test_verify_names_the_event_whose_body_changed(
    ledger: Ledger, operator_key: KeyPair, pick: Callable[[int], int]
) -> None:
    full_market(ledger, operator_key)
    seq = pick(ledger.head().size)
    drop_event_guard(ledger)
    with ledger.engine.begin() as conn:
        body = conn.execute(text("SELECT body FROM events WHERE seq = :s"), {"s": seq}).scalar_one()
        tampered = flip_one_byte(body)
        assert len(tampered) == len(body)
        assert sum(a != b for a, b in zip(body, tampered, strict=True)) == 1
        conn.execute(text("UPDATE events SET body = :b WHERE seq = :s"), {"b": tampered, "s": seq})
    with pytest.raises(IntegrityError) as caught:
        ledger.verify()
    assert caught.value.seq == seq
    assert f"seq {seq}" in str(caught.value)


# --- rebuild ------------------------------------------------------------------------------------


def owner_usage_market(m: Market) -> None:
    worked_example(m)


def resolved_usage_market(m: Market) -> None:
    """Another party's usage with no grant named, resolved at append."""
    worked_example(m)
    m.party("dep", "deployer")
    m.do("dev", "grant_consent", "M", "*", ["infer"], per_unit="0.01", grant="gM-any")
    m.do("dep", "record_usage", "M", 100, "2.00")
    m.do("dev", "grant_consent", "M", "dep", ["generate"], share="0.2", grant="gM-dep")
    m.do("dep", "record_usage", "M", 50)
    m.do("dev", "revoke_consent", "gM-dep")
    m.do("dep", "record_usage", "M", 25)


def named_usage_and_rotation_market(m: Market) -> None:
    """Usage naming its grant, a revocation, and a key rotation."""
    worked_example(m)
    m.party("dep", "deployer")
    m.do("dev", "grant_consent", "M", "dep", ["infer"], per_unit="0.01", grant="gM-dep")
    m.do("dep", "record_usage", "M", 100, "2.00", grant="gM-dep")
    new = KeyPair.generate()
    with m.client("dep") as c:
        c.rotate_key(new)
    m.keys["dep"] = new
    m.do("dep", "record_usage", "M", 7, grant="gM-dep")
    m.do("dev", "revoke_consent", "gM-dep")
    m.do("c1", "register_asset", "item-3", "data", metadata={"lang": "fr", "tokens": 12})


@pytest.mark.parametrize(
    "build",
    [
        pytest.param(owner_usage_market, id="owner-usage"),
        pytest.param(resolved_usage_market, id="resolved-usage"),
        pytest.param(named_usage_and_rotation_market, id="named-usage-and-key-rotation"),
    ],
)
def test_rebuild_reproduces_the_projections(
    ledger: Ledger, build: Callable[[Market], None]
) -> None:
    build(Market(ledger))
    before = dump(ledger, s.PROJECTIONS)
    assert ledger.rebuild() == ledger.head().size
    assert dump(ledger, s.PROJECTIONS) == before


def test_rebuild_restores_damaged_projections(ledger: Ledger) -> None:
    named_usage_and_rotation_market(Market(ledger))
    before = dump(ledger, s.PROJECTIONS)
    with ledger.engine.begin() as conn:
        conn.execute(s.usage.delete())
        conn.execute(s.grants.update().values(revoked_seq=None))
        conn.execute(s.parties.delete().where(s.parties.c.party == "c2"))
    assert dump(ledger, s.PROJECTIONS) != before
    ledger.rebuild()
    assert dump(ledger, s.PROJECTIONS) == before


def test_rebuild_brings_read_tables_of_an_earlier_version_up_to_date(ledger: Ledger) -> None:
    """Before usage groups, the usage table had no `group_id`: appends fail on such a database
    until `rebuild` makes the read tables anew from the log."""
    m = deployer_market(ledger)
    with m.client("dep") as c:
        for i in range(5):
            c.record_usage("item-1", 2, "0.5", id=f"early-{i}")
    before = dump(ledger, s.PROJECTIONS)
    with ledger.engine.begin() as conn:
        conn.execute(text("DROP TABLE usage"))
        conn.execute(text("DROP TABLE usage_groups"))
        conn.execute(text('CREATE TABLE usage (seq BIGINT PRIMARY KEY, asset VARCHAR(128) '
                          'NOT NULL, actor VARCHAR(128) NOT NULL, "grant" VARCHAR(128), '
                          "units BIGINT NOT NULL, revenue BIGINT NOT NULL)"))  # fmt: skip
    with pytest.raises(StoreError), m.client("dep", retries=0) as c:
        c.record_usage("item-1", 1, id="refused-until-rebuilt")
    ledger.rebuild()
    assert dump(ledger, s.PROJECTIONS) == before
    m.do("dep", "record_usage", "item-1", 1, id="after-rebuild")
    assert ledger.usage_count() == 6


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)  # SQLite has no plan cache
def test_postgresql_plans_each_query_for_its_own_parameters(ledger: Ledger) -> None:
    """A generic plan kept from when a table was small made the rules' asset lookups take seconds
    once the table held hundreds of thousands of assets (docs/performance.md)."""
    assert ledger.dialect == "postgresql"
    for _ in range(2):  # every connection of the pool, not just the first
        with ledger.engine.connect() as conn:
            assert conn.exec_driver_sql("SHOW plan_cache_mode").scalar() == "force_custom_plan"
            assert conn.exec_driver_sql("SHOW search_path").scalar() != ""


def test_a_new_sqlite_log_has_16_kib_pages_and_an_old_one_keeps_its_own(tmp_path: Path) -> None:
    """Larger pages mean fewer system calls per batch (docs/performance.md); a database made
    with another page size opens, appends and verifies as it is."""
    new, old = tmp_path / "new.db", tmp_path / "old.db"
    made = sqlite3.connect(old)
    made.execute("PRAGMA page_size=4096")
    made.execute("CREATE TABLE unrelated (x)")
    made.close()
    for path, size in ((new, 16384), (old, 4096)):
        led = Ledger.open(f"sqlite:///{path}")
        led.initialise(KeyPair.generate())
        with sqlite3.connect(path) as raw:
            assert raw.execute("PRAGMA page_size").fetchone() == (size,)
            assert raw.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert led.verify().size == 1
        led.close()


# --- proofs and checkpoints ---------------------------------------------------------------------


def proof_market(ledger: Ledger) -> list[bytes]:
    """A log of 41 events; returns its leaf hashes, recomputed from the records."""
    m = deployer_market(ledger)
    for n in (3, 10, 1, 22):
        ledger.append(sign(m, usage_events(n, prefix=f"p{n}")))
    return [leaf_hash(leaf_bytes(r.signed_dict(), r.recorded_at)) for r in event_records(ledger)]


SIZES = (1, 2, 3, 7, 8, 16, 17, 31, 32, 33, 41)


def test_inclusion_proofs_verify(ledger: Ledger) -> None:
    leaves = proof_market(ledger)
    assert len(leaves) == 41 == ledger.head().size
    for size in SIZES:
        root = root_from_leaves(leaves[:size])
        assert ledger.root_at(size) == root
        for seq in sorted({1, size // 2 + 1, size}):
            p = ledger.inclusion_proof(seq, size)
            assert (p["leaf_index"], p["tree_size"]) == (seq - 1, size)
            assert bytes.fromhex(p["leaf_hash"]) == leaves[seq - 1]
            assert bytes.fromhex(p["root"]) == root
            proof = [bytes.fromhex(h) for h in p["proof"]]
            verify_inclusion(leaves[seq - 1], seq - 1, size, proof, root)
    p = ledger.inclusion_proof(5)
    assert p["tree_size"] == 41
    proof = [bytes.fromhex(h) for h in p["proof"]]
    with pytest.raises(ProofInvalid):
        verify_inclusion(leaves[5], 4, 41, proof, bytes.fromhex(p["root"]))


def test_consistency_proofs_verify(ledger: Ledger) -> None:
    leaves = proof_market(ledger)
    for size2 in SIZES:
        for size1 in (s1 for s1 in SIZES if s1 <= size2):
            p = ledger.consistency_proof(size1, size2)
            root1, root2 = bytes.fromhex(p["root1"]), bytes.fromhex(p["root2"])
            assert root1 == root_from_leaves(leaves[:size1])
            assert root2 == root_from_leaves(leaves[:size2])
            proof = [bytes.fromhex(h) for h in p["proof"]]
            verify_consistency(size1, size2, proof, root1, root2)
    p = ledger.consistency_proof(7, 33)
    proof = [bytes.fromhex(h) for h in p["proof"]]
    with pytest.raises(ProofInvalid):
        verify_consistency(7, 33, proof, bytes.fromhex(p["root2"]), bytes.fromhex(p["root2"]))


def test_checkpoints_verify_and_are_consistent(ledger: Ledger, operator_key: KeyPair) -> None:
    m = deployer_market(ledger)
    head1 = ledger.head()
    note1 = ledger.checkpoint(operator_key)["note"]
    cp1 = verify_checkpoint(note1, head1.origin, bytes.fromhex(operator_key.public_hex))
    assert (cp1.origin, cp1.size, cp1.root) == (head1.origin, head1.size, head1.root)

    ledger.append(sign(m, usage_events(20)))
    head2 = ledger.head()
    note2 = ledger.checkpoint(operator_key)["note"]
    cp2 = verify_checkpoint(note2, head2.origin, bytes.fromhex(operator_key.public_hex))
    assert (cp2.size, cp2.root) == (head2.size, head2.root)
    p = ledger.consistency_proof(cp1.size, cp2.size)
    verify_consistency(cp1.size, cp2.size, [bytes.fromhex(h) for h in p["proof"]], cp1.root,
                       cp2.root)  # fmt: skip
    assert [c["size"] for c in ledger.checkpoints()] == [cp1.size, cp2.size]

    other = KeyPair.generate()
    with pytest.raises(SignatureInvalid):
        verify_checkpoint(note2, head2.origin, bytes.fromhex(other.public_hex))
    with pytest.raises(StoreError):
        ledger.checkpoint(other)
