"""Guarantee 4 of issue 5: tampering with a stored log is caught, at the first bad seq.

A market of 191 events in 39 signed batches is built once per backend (several
parties, a key rotation, multi-event batches, metadata). Then, many times over, a fresh copy of its
log is made, the append-only triggers of the copy are dropped (as a compromised database would),
one random tampering is applied, and `Ledger.verify()` must raise `IntegrityError` whose `seq` is
the first bad seq computed here for that tampering. A sample also goes through `edvex log verify`,
which must exit 1 and name the same seq.

Fresh copies: on SQLite the pristine database file is copied with SQLite's backup API (an exact
copy, triggers included, in a millisecond); on PostgreSQL the exported records are loaded once
with `Ledger.restore` into a schema of their own, its triggers dropped, and before every tampering
its log tables and head are emptied and reloaded from the pristine schema.

Which seq is expected, per tampering (each tampering function returns it):

* one changed byte in a body, a changed amount, a changed stored leaf, another column changed, a
  deleted event: that event's seq (everything after it is also off, but it is the first);
* two events swapped (contents moved, seqs kept): the lower seq when the two come from different
  batches; when both are in one batch, each event still carries its own valid hash and leaf, and
  only the batch digest (the signed order) shows the swap, so the batch's first seq;
* an event inserted (later seqs shifted up, a forged row with a correct hash and leaf in the
  gap): the forged seq when it opens a batch; inside a batch, the batch's first seq (the digest
  is what fails, as no event hash is wrong);
* a batch signature replaced (random bytes, another key's signature, or another key and its
  valid signature): the batch's first seq;
* a stored tree node changed: the first seq under that node (no event is wrong; the node is).

The other test checks the checkpoint side: a consistency proof from an earlier signed checkpoint
fails against a history rewritten by someone who holds every party's key, even though the
rewritten log verifies on its own.
"""

from __future__ import annotations

import hashlib
import json
import random
import sqlite3
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from click.testing import CliRunner
from figures import FIGURES
from helpers import Market, drop_guards, worked_example
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection, make_url

from cli.main import cli
from ledger import IntegrityError, KeyPair, Ledger, ProofInvalid, SignedBatch
from ledger.audit import BatchRecord, EventRecord
from ledger.checkpoint import verify_checkpoint
from ledger.events import parse_event
from ledger.merkle import verify_consistency
from ledger.schema import LOG_TABLES
from ledger.store import normalise_url

TAMPERINGS_PER_BACKEND = 200
CLI_SAMPLE_EVERY = 20  # every 20th tampering is also checked through `edvex log verify`
SEED = 20261128

# --- the market -----------------------------------------------------------------------------------


def build_market(ledger: Ledger) -> Market:
    """About 200 events in 40-odd batches: the worked example, a deployer under tiers and a
    minimum, a key rotation, an asset with metadata, and usage in batches of 7 and 9."""
    m = Market(ledger)
    worked_example(m)
    m.party("dep", "deployer")
    m.do(
        "dev",
        "grant_consent",
        "M",
        "dep",
        ["infer"],
        tiers=[(50, "0.01"), (None, "0.005")],
        minimum="3.00",
        share="0.02",
        grant="g-dep",
    )
    m.do("c1", "register_asset", "item-3", "data", metadata={"lang": "fr", "tokens": 12})
    with m.client("dep", batch_size=9) as c:
        for i in range(45):
            c.record_usage("M", i % 13, f"{i}.25" if i % 2 else None)
    new = KeyPair.generate()
    with m.client("dep") as c:
        c.rotate_key(new)
    m.keys["dep"] = new
    with m.client("dep", batch_size=9) as c:
        for i in range(45):
            c.record_usage("M", 1 + i % 5)
    with m.client("dev", batch_size=7) as c:
        for i in range(84):
            c.record_usage("M", i, "0.5")
    return m


@dataclass(frozen=True)
class Log:
    """What the tamperings need to know of the pristine log."""

    size: int
    events: dict[int, EventRecord]
    batches: list[BatchRecord]
    nodes: list[tuple[int, int]]

    def batch_of(self, seq: int) -> BatchRecord:
        return next(b for b in self.batches if b.first_seq <= seq <= b.last_seq)


def describe(ledger: Ledger) -> Log:
    events, batches = {}, []
    for rec in ledger.records():
        if isinstance(rec, EventRecord):
            events[rec.seq] = rec
        else:
            batches.append(rec)
    with ledger.engine.connect() as conn:
        nodes = [(r.level, r.idx) for r in conn.execute(text("SELECT level, idx FROM tree_nodes"))]
    return Log(ledger.head().size, events, batches, sorted(nodes))


# --- fresh copies ---------------------------------------------------------------------------------


class Copies:
    """Fresh copies of the pristine log, each with its append-only triggers dropped.

    SQLite: a new file each time, copied with SQLite's backup API. PostgreSQL: one schema made
    with `Ledger.restore` from the exported records, its triggers dropped, and its log tables
    reloaded from the pristine schema before every tampering (creating a schema per tampering
    costs about 0.3 s, which 200 tamperings cannot afford).
    """

    def __init__(self, ledger: Ledger, db_url: str, tmp_path: Path) -> None:
        self.ledger = ledger
        self.url = normalise_url(db_url)
        self.tmp = tmp_path
        self.records = list(ledger.records())
        self.postgres = ledger.dialect == "postgresql"
        self._work: str | None = None
        self._schemas: list[str] = []

    def __enter__(self) -> Copies:
        return self

    def __exit__(self, *exc: object) -> None:
        if self._schemas:
            admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
            with admin.connect() as conn:
                for schema in self._schemas:
                    conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
            admin.dispose()

    @contextmanager
    def fresh(self) -> Iterator[str]:
        if self.postgres:
            yield self._pg_reloaded()
            return
        source = make_url(self.url).database
        assert source is not None
        target = self.tmp / f"copy-{uuid.uuid4().hex[:8]}.db"
        src, dst = sqlite3.connect(source), sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            src.close()
            dst.close()
        url = f"sqlite:///{target}"
        with Ledger.open(url) as led, led.engine.begin() as conn:
            drop_guards(conn)
        yield url
        target.unlink()

    def _pg_reloaded(self) -> str:
        if self._work is None:
            self._work = self._pg_restored()
        with self.ledger.engine.connect() as conn:
            pristine = conn.execute(text("SELECT current_schema()")).scalar_one()
        with Ledger.open(self._work) as led, led.engine.begin() as conn:
            tables = ("log_head", *LOG_TABLES)
            conn.execute(text(f"TRUNCATE {', '.join(tables)}"))
            for table in tables:
                conn.execute(text(f"INSERT INTO {table} SELECT * FROM {pristine}.{table}"))
        return self._work

    def _pg_restored(self) -> str:
        schema = f"t_{uuid.uuid4().hex[:12]}"
        self._schemas.append(schema)
        admin = create_engine(self.url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        admin.dispose()
        url = make_url(self.url).update_query_dict({"options": f"-csearch_path={schema}"})
        copy = url.render_as_string(hide_password=False)
        with Ledger.open(copy) as led:
            led.restore(self.records, "USD")
            restored, pristine = led.head(), self.ledger.head()
            assert (restored.size, restored.root) == (pristine.size, pristine.root)
            with led.engine.begin() as conn:
                drop_guards(conn)
        return copy


# --- forging, as an attacker would: from DESIGN.md's definitions, not the ledger's code -----------


def jcs(value: Any) -> bytes:
    return bytes(rfc8785.dumps(value))


def forged_row(seq: int, batch: BatchRecord, recorded_at: str) -> dict[str, Any]:
    """A usage event with a correct hash and leaf (DESIGN.md "Exports"), never signed."""
    signed = {
        "id": f"forged-{uuid.uuid4().hex}",
        "type": "usage.recorded",
        "actor": batch.actor,
        "occurred_at": recorded_at,
        "body": {"asset": "M", "units": 1000},
    }
    return {
        "seq": seq,
        **{k: v for k, v in signed.items() if k != "body"},
        "recorded_at": recorded_at,
        "body": jcs(signed["body"]).decode(),
        "hash": hashlib.sha256(jcs(signed)).digest(),
        "leaf": hashlib.sha256(b"\x00" + jcs({**signed, "recorded_at": recorded_at})).digest(),
        "batch": batch.batch,
    }


def flip_bit(data: bytes, rng: random.Random) -> bytes:
    i = rng.randrange(len(data))
    return data[:i] + bytes([data[i] ^ (1 << rng.randrange(8))]) + data[i + 1 :]


EVENT_COLUMNS = (
    "id",
    "type",
    "actor",
    "occurred_at",
    "recorded_at",
    "body",
    "hash",
    "leaf",
    "batch",
)

# --- the tamperings: each changes one thing and returns (first bad seq, what it did) --------------

Tampering = Callable[[Connection, Log, random.Random], tuple[int, str]]


def change_body_byte(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    seq = rng.randint(1, log.size)
    body = conn.execute(text("SELECT body FROM events WHERE seq = :s"), {"s": seq}).scalar_one()
    i = rng.randrange(len(body))
    new = rng.choice([c for c in '{}[]":,0123456789abcdefxyz-_. ' if c != body[i]])
    changed = body[:i] + new + body[i + 1 :]
    conn.execute(text("UPDATE events SET body = :b WHERE seq = :s"), {"b": changed, "s": seq})
    return seq, f"body byte {i} of seq {seq}: {body[i]!r} -> {new!r}"


def change_amount(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    """Revenue or units of a usage event, or a grant's minimum, re-encoded canonically."""
    candidates = [
        (seq, path)
        for seq, e in log.events.items()
        for path in (("revenue",), ("units",), ("terms", "minimum"))
        if _get(dict(e.body), path) is not None
    ]
    seq, path = rng.choice(candidates)
    body = json.loads(
        conn.execute(text("SELECT body FROM events WHERE seq = :s"), {"s": seq}).scalar_one()
    )
    old = _get(body, path)
    new = old + rng.choice([1, 10, 1_000_000, -1 if old else 7])
    node = body
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = new
    conn.execute(
        text("UPDATE events SET body = :b WHERE seq = :s"), {"b": jcs(body).decode(), "s": seq}
    )
    return seq, f"{'.'.join(path)} of seq {seq}: {old} -> {new}"


def _get(body: dict[str, Any], path: tuple[str, ...]) -> Any:
    node: Any = body
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def delete_event(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    seq = rng.randint(1, log.size)
    conn.execute(text("DELETE FROM events WHERE seq = :s"), {"s": seq})
    return seq, f"deleted seq {seq}"


def swap_events(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    """Swap every column but seq between two events; same-batch swaps are half of them."""
    if rng.random() < 0.5:
        batch = rng.choice([b for b in log.batches if b.last_seq > b.first_seq])
        i, j = sorted(rng.sample(range(batch.first_seq, batch.last_seq + 1), 2))
    else:
        i, j = sorted(rng.sample(range(1, log.size + 1), 2))
    rows = {
        r.seq: r._asdict()
        for r in conn.execute(text("SELECT * FROM events WHERE seq IN (:i, :j)"), {"i": i, "j": j})
    }
    conn.execute(text("UPDATE events SET id = :tmp WHERE seq = :i"), {"tmp": "swap-tmp", "i": i})
    for seq, other in ((j, i), (i, j)):
        sets = ", ".join(f"{c} = :{c}" for c in EVENT_COLUMNS)
        conn.execute(
            text(f"UPDATE events SET {sets} WHERE seq = :seq"),
            {**{c: rows[other][c] for c in EVENT_COLUMNS}, "seq": seq},
        )
    same = log.batch_of(i).batch == log.batch_of(j).batch
    expected = log.batch_of(i).first_seq if same else i
    return expected, f"swapped seq {i} and {j} ({'same batch' if same else 'two batches'})"


def insert_event(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    """Shift seq >= k up by one and put a forged event at k, in the batch the range gives k."""
    seq = rng.randint(1, log.size)
    batch = log.batch_of(seq)
    conn.execute(text("UPDATE events SET seq = seq + 1000000 WHERE seq >= :k"), {"k": seq})
    conn.execute(text("UPDATE events SET seq = seq - 999999 WHERE seq >= 1000000"))
    row = forged_row(seq, batch, log.events[seq].recorded_at)
    columns = ", ".join(row)
    conn.execute(
        text(f"INSERT INTO events ({columns}) VALUES ({', '.join(':' + c for c in row)})"), row
    )
    expected = seq if seq == batch.first_seq else batch.first_seq
    return expected, f"forged event inserted at seq {seq} (batch {batch.batch})"


def replace_signature(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    batch = rng.choice(log.batches)
    attacker = KeyPair.generate()
    how = rng.choice(["random bytes", "another key's signature", "another key and its signature"])
    values: dict[str, Any] = {"b": batch.batch, "key": batch.key}
    if how == "random bytes":
        values["sig"] = rng.randbytes(64)
    else:
        values["sig"] = attacker.sign(batch.digest)
        if how == "another key and its signature":
            values["key"] = attacker.public_hex
    conn.execute(text("UPDATE batches SET signature = :sig, key = :key WHERE batch = :b"), values)
    return batch.first_seq, f"batch {batch.batch} signature: {how}"


def change_leaf(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    seq = rng.randint(1, log.size)
    leaf = conn.execute(text("SELECT leaf FROM events WHERE seq = :s"), {"s": seq}).scalar_one()
    conn.execute(
        text("UPDATE events SET leaf = :l WHERE seq = :s"),
        {"l": flip_bit(bytes(leaf), rng), "s": seq},
    )
    return seq, f"stored leaf of seq {seq}"


def change_node(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    level, idx = rng.choice(log.nodes)
    where = "level = :lv AND idx = :ix"
    old = conn.execute(
        text(f"SELECT hash FROM tree_nodes WHERE {where}"), {"lv": level, "ix": idx}
    ).scalar_one()
    conn.execute(
        text(f"UPDATE tree_nodes SET hash = :h WHERE {where}"),
        {"h": flip_bit(bytes(old), rng), "lv": level, "ix": idx},
    )
    return (idx << level) + 1, f"tree node level {level} index {idx}"


def change_column(conn: Connection, log: Log, rng: random.Random) -> tuple[int, str]:
    """id, type, actor, occurred_at, recorded_at or the stored hash of one event."""
    seq = rng.randint(1, log.size)
    e = log.events[seq]
    column, value = rng.choice(
        [
            ("id", e.id + "x"),
            ("type", "usage.recorded" if e.type != "usage.recorded" else "consent.revoked"),
            ("actor", "mallory"),
            ("occurred_at", "2001-01-01T00:00:00.000000Z"),
            (
                "recorded_at",
                (datetime.fromisoformat(e.recorded_at[:-1]) + timedelta(microseconds=1))
                .replace(tzinfo=UTC)
                .strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            ),
            ("hash", flip_bit(e.hash, rng)),
        ]
    )
    conn.execute(text(f"UPDATE events SET {column} = :v WHERE seq = :s"), {"v": value, "s": seq})
    return seq, f"{column} of seq {seq}"


TAMPERINGS: list[Tampering] = [
    change_body_byte,
    change_amount,
    delete_event,
    swap_events,
    insert_event,
    replace_signature,
    change_leaf,
    change_node,
    change_column,
]

# --- the tests ------------------------------------------------------------------------------------


def cli_verify(url: str) -> tuple[int, Any, str]:
    result = CliRunner().invoke(cli, ["--db", url, "--json", "log", "verify"])
    assert result.exception is None or isinstance(result.exception, SystemExit), result.output
    return result.exit_code, json.loads(result.stdout), result.stderr


def tamper_once(copies: Copies, log: Log, rng: random.Random, n: int) -> str | None:
    """Tampering number `n` on a fresh copy; None when it was caught at the expected seq, else
    what went wrong."""
    tamper = TAMPERINGS[n % len(TAMPERINGS)]
    with copies.fresh() as url, Ledger.open(url) as led:
        with led.engine.begin() as conn:
            expected, what = tamper(conn, log, rng)
        try:
            led.verify()
            return f"{what}: verify passed, expected seq {expected}"
        except IntegrityError as e:
            if e.seq != expected:
                return f"{what}: verify named seq {e.seq}, expected {expected} ({e})"
        if n % CLI_SAMPLE_EVERY == 0:
            code, doc, stderr = cli_verify(url)
            if (code, doc.get("ok"), doc.get("seq")) != (1, False, expected):
                return f"{what}: `edvex log verify` gave exit {code}, {doc}"
            lines = stderr.splitlines()
            if len(lines) != 1 or f"seq {expected}" not in lines[0]:
                return f"{what}: `edvex log verify` wrote {stderr!r}"
    return None


def test_random_tamperings_are_caught_at_the_first_bad_seq(
    ledger: Ledger, db_url: str, tmp_path: Path
) -> None:
    build_market(ledger)
    ledger.verify()
    log = describe(ledger)
    assert 150 <= log.size <= 300 and len(log.batches) >= 30 and log.nodes
    rng = random.Random(f"{SEED}-{ledger.dialect}")
    with Copies(ledger, db_url, tmp_path) as copies:
        outcomes = [tamper_once(copies, log, rng, n) for n in range(TAMPERINGS_PER_BACKEND)]
    missed = [m for m in outcomes if m is not None]
    FIGURES.append(
        f"tamperings tried {len(outcomes)}, caught {len(outcomes) - len(missed)} "
        f"({ledger.dialect}; a log of {log.size} events in {len(log.batches)} batches; "
        f"every {CLI_SAMPLE_EVERY}th also through `edvex log verify`)"
    )
    assert not missed, "\n".join(missed)


def test_forged_row_past_the_head_is_caught(ledger: Ledger, db_url: str, tmp_path: Path) -> None:
    """An event row added after the last one, the head left as it was: the log now holds a row
    that no hash chain, batch or tree accounts for, so verify must name seq size + 1."""
    build_market(ledger)
    log = describe(ledger)
    with (
        Copies(ledger, db_url, tmp_path) as copies,
        copies.fresh() as url,
        Ledger.open(url) as led,
    ):
        with led.engine.begin() as conn:
            row = forged_row(log.size + 1, log.batches[-1], log.events[log.size].recorded_at)
            columns = ", ".join(row)
            values = ", ".join(":" + c for c in row)
            conn.execute(text(f"INSERT INTO events ({columns}) VALUES ({values})"), row)
        with pytest.raises(IntegrityError) as caught:
            led.verify()
        assert caught.value.seq == log.size + 1


# --- checkpoints against a rewritten history ------------------------------------------------------

T0 = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)


def fixed_clock() -> datetime:
    return T0


def scripted_history(ledger: Ledger, keys: dict[str, KeyPair], revenue: str) -> None:
    """The same events, ids and timestamps on every call; only the first usage's revenue varies."""
    stamp = "2026-11-28T11:00:00.000000Z"

    def send(actor: str, events: list[dict[str, Any]]) -> None:
        parsed = [parse_event({"actor": actor, "occurred_at": stamp, **e}) for e in events]
        ledger.append(SignedBatch.sign(actor, keys[actor], parsed))

    send(
        "operator",
        [
            {
                "id": "op",
                "type": "party.registered",
                "body": {
                    "party": "operator",
                    "kind": "operator",
                    "public_key": keys["operator"].public_hex,
                    "name": "operator",
                },
            }
        ],
    )
    for party, kind in (("c1", "creator"), ("dep", "deployer")):
        send(
            party,
            [
                {
                    "id": f"reg-{party}",
                    "type": "party.registered",
                    "body": {
                        "party": party,
                        "kind": kind,
                        "public_key": keys[party].public_hex,
                        "name": party,
                    },
                }
            ],
        )
    send(
        "c1",
        [
            {"id": "a1", "type": "asset.registered", "body": {"asset": "item-1", "kind": "data"}},
            {
                "id": "g1",
                "type": "consent.granted",
                "body": {
                    "grant": "g1",
                    "asset": "item-1",
                    "grantee": "dep",
                    "purposes": ["infer"],
                    "terms": {"per_unit": "0.01", "share": "0.1"},
                    "valid_from": stamp,
                },
            },
        ],
    )
    usage = [
        {
            "id": f"u{i}",
            "type": "usage.recorded",
            "body": {"asset": "item-1", "units": 1 + i, "revenue": revenue if i == 0 else "1"},
        }
        for i in range(40)
    ]
    for start in range(0, 40, 10):
        send("dep", usage[start : start + 10])


@pytest.fixture
def second_url(db_url: str, tmp_path: Path) -> Iterator[str]:
    """Another empty database on the same backend as `db_url`."""
    url = normalise_url(db_url)
    if make_url(url).get_backend_name() == "sqlite":
        yield f"sqlite:///{tmp_path / 'rewritten.db'}"
        return
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    other = make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    yield other.render_as_string(hide_password=False)
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


def test_consistency_proof_from_a_signed_checkpoint_fails_against_a_rewritten_history(
    db_url: str, second_url: str
) -> None:
    """The operator signed a checkpoint at size 25; later the whole history is rewritten
    consistently (every party's key in hand, hashes, signatures, tree and head all redone) with
    one amount changed at seq 6. The rewritten log verifies by itself, but it cannot prove that
    it extends the checkpoint that was seen before."""
    keys = {p: KeyPair.generate() for p in ("operator", "c1", "dep")}
    honest = Ledger.open(db_url, clock=fixed_clock)
    rewritten = Ledger.open(second_url, clock=fixed_clock)
    try:
        for led, revenue in ((honest, "1"), (rewritten, "1000")):
            led.create("USD", "edvex/test")
            scripted_history(led, keys, revenue)
        note = honest.checkpoint(keys["operator"], 25)["note"]
        seen = verify_checkpoint(note, "edvex/test", bytes.fromhex(keys["operator"].public_hex))
        assert seen.size == 25

        # the honest log extends its checkpoint
        size2 = honest.head().size
        p = honest.consistency_proof(seen.size, size2)
        verify_consistency(
            seen.size,
            size2,
            [bytes.fromhex(h) for h in p["proof"]],
            seen.root,
            bytes.fromhex(p["root2"]),
        )

        # the rewritten one is self-consistent, differs from seq 6 on, and cannot prove it
        rewritten.verify()
        assert rewritten.head().size == size2
        assert rewritten.root_at(5) == honest.root_at(5)
        assert rewritten.root_at(6) != honest.root_at(6)
        q = rewritten.consistency_proof(seen.size, size2)
        with pytest.raises(ProofInvalid):
            verify_consistency(
                seen.size,
                size2,
                [bytes.fromhex(h) for h in q["proof"]],
                seen.root,
                bytes.fromhex(q["root2"]),
            )
        # nor can it borrow the honest proof: its own root is not the one that proof leads to
        with pytest.raises(ProofInvalid):
            verify_consistency(
                seen.size,
                size2,
                [bytes.fromhex(h) for h in p["proof"]],
                seen.root,
                bytes.fromhex(q["root2"]),
            )
    finally:
        honest.close()
        rewritten.close()
