"""Guarantee 8 of issue 5: the database itself guards the log, on SQLite and PostgreSQL.

* Every UPDATE and DELETE on every log table (`ledger.schema.LOG_TABLES`) and on settlement's
  `runs`, `statements` and `postings` is refused by the database's triggers: for every column,
  to a new value, to the same value, and for the nullable `postings.grant` and `postings.units`
  from a value to NULL and from NULL to a value; one row and every row; TRUNCATE on PostgreSQL.
  `tests/test_append.py` holds a few named cases of the same on the log tables alone.
* Readers never see a seq appear behind one they already read: a reader thread polls the log
  while three writer threads append, and every poll must continue the log exactly where the
  previous one stopped (no gap later filled in).
"""

from __future__ import annotations

import random
import threading
import time
from typing import Any

import pytest
import sqlalchemy.exc
from figures import FIGURES
from helpers import Market, worked_example
from sqlalchemy import Column, LargeBinary, Table, select, text
from sqlalchemy.engine import Connection

from ledger import KeyPair, Ledger, SignedBatch
from ledger import schema as s
from ledger.events import parse_event
from settlement import schema as settlement_schema
from settlement.run import settle

GUARDED: list[Table] = [
    *(s.metadata.tables[name] for name in s.LOG_TABLES),
    *(settlement_schema.metadata.tables[name] for name in settlement_schema.TABLES),
]

# --- a database with a row in every guarded table, NULLs included ---------------------------------


def settled_market(ledger: Ledger, operator: KeyPair) -> None:
    """The worked example plus a deployer paying fees (postings with a grant and units) next to
    royalties (postings whose grant and units are NULL), settled twice, with checkpoints."""
    m = Market(ledger)
    worked_example(m)
    m.party("dep", "deployer")
    m.do(
        "dev",
        "grant_consent",
        "M",
        "dep",
        ["infer"],
        tiers=[(10, "0.01"), (None, "0.005")],
        minimum="1.00",
        share="0.1",
        grant="g-dep",
    )
    with m.client("dep", batch_size=5) as c:
        for i in range(20):
            c.record_usage("M", i, "0.10")
    settle(ledger, operator)
    m.do("dev", "record_usage", "M", 3, "7.00")
    settle(ledger, operator)
    ledger.checkpoint(operator)


def dump(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    with ledger.engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in GUARDED
        }


# --- the statements to refuse ---------------------------------------------------------------------


def another(column: Column[Any], value: Any) -> Any:
    """A different value that fits the column (same length, same range)."""
    if isinstance(column.type, LargeBinary):
        return bytes(b ^ 0xFF for b in value) if value else b"\x01"
    if isinstance(value, int):
        return value + 1
    return value[:-1] + ("b" if value[-1:] == "a" else "a")


def row_where(conn: Connection, table: Table, condition: Any) -> Any:
    return conn.execute(select(table).where(condition).limit(1)).first()


def pk_filter(table: Table, row: Any) -> Any:
    cond = None
    for col in table.primary_key.columns:
        term = col == getattr(row, col.name)
        cond = term if cond is None else cond & term
    return cond


def attempts(conn: Connection, dialect: str) -> list[tuple[str, Any]]:
    """(name, statement) for every change the database must refuse."""
    out: list[tuple[str, Any]] = []
    for table in GUARDED:
        first = conn.execute(select(table).limit(1)).first()
        assert first is not None, f"{table.name} has no row to change"
        for col in table.columns:
            row = row_where(conn, table, col.is_not(None))
            assert row is not None, f"{table.name}.{col.name} is NULL in every row"
            value = getattr(row, col.name)
            where = pk_filter(table, row)
            out.append(
                (
                    f"{table.name}.{col.name} = new value",
                    table.update().where(where).values({col.name: another(col, value)}),
                )
            )
            out.append(
                (
                    f"{table.name}.{col.name} = itself",
                    table.update().where(where).values({col.name: col}),
                )
            )
            if col.nullable:
                out.append(
                    (
                        f"{table.name}.{col.name} value -> NULL",
                        table.update().where(where).values({col.name: None}),
                    )
                )
                empty = row_where(conn, table, col.is_(None))
                assert empty is not None, f"{table.name}.{col.name} is never NULL"
                out.append(
                    (
                        f"{table.name}.{col.name} NULL -> value",
                        table.update().where(pk_filter(table, empty)).values({col.name: value}),
                    )
                )
        out.append((f"{table.name}: delete one row", table.delete().where(pk_filter(table, first))))
        out.append((f"{table.name}: delete every row", table.delete()))
        if dialect == "postgresql":
            out.append((f"{table.name}: truncate", text(f"TRUNCATE {table.name}")))
    return out


def test_every_change_to_every_column_of_the_log_is_refused(
    ledger: Ledger, operator_key: KeyPair
) -> None:
    settled_market(ledger, operator_key)
    before = dump(ledger)
    with ledger.engine.connect() as conn:
        planned = attempts(conn, ledger.dialect)
    accepted = []
    for name, statement in planned:
        try:
            with ledger.engine.begin() as conn:
                conn.execute(statement)
            accepted.append(f"{name}: accepted")
        except sqlalchemy.exc.DBAPIError as e:
            if "append-only" not in str(e.orig):
                accepted.append(f"{name}: refused, but not by the guard ({e.orig})")
    assert dump(ledger) == before
    ledger.verify()
    columns = sum(len(t.columns) for t in GUARDED)
    FIGURES.append(
        f"database guards: {len(planned) - len(accepted)} of {len(planned)} changes refused on "
        f"{ledger.dialect} ({len(GUARDED)} tables, {columns} columns, NULLs both ways)"
    )
    assert not accepted, "\n".join(accepted)


def replacements(table: Table, dialect: str) -> list[tuple[str, str]]:
    """Statements that overwrite an existing row by inserting over it."""
    keys = ", ".join(f'"{c.name}"' for c in table.primary_key.columns)
    other = next(c.name for c in table.columns if not c.primary_key)
    one_row = f"SELECT * FROM {table.name} WHERE true LIMIT 1"  # WHERE: SQLite's upsert syntax
    upsert = (
        f"INSERT INTO {table.name} {one_row} "
        f'ON CONFLICT ({keys}) DO UPDATE SET "{other}" = excluded."{other}"'
    )
    out = [(f"{table.name}: INSERT ... ON CONFLICT DO UPDATE", upsert)]
    if dialect == "sqlite":
        out += [
            (f"{table.name}: REPLACE INTO", f"REPLACE INTO {table.name} {one_row}"),
            (f"{table.name}: INSERT OR REPLACE", f"INSERT OR REPLACE INTO {table.name} {one_row}"),
        ]
    return out


def test_overwriting_a_row_by_insert_is_refused(ledger: Ledger, operator_key: KeyPair) -> None:
    """An upsert or a REPLACE deletes or updates the row it conflicts with: the guards must see
    it. (SQLite fires no DELETE trigger for the rows REPLACE removes unless recursive triggers
    are on, so a REPLACE there is the same as an unguarded DELETE and INSERT.)"""
    settled_market(ledger, operator_key)
    before = dump(ledger)
    accepted = []
    for table in GUARDED:
        for name, statement in replacements(table, ledger.dialect):
            try:
                with ledger.engine.begin() as conn:
                    conn.execute(text(statement))
                accepted.append(f"{name}: accepted")
            except sqlalchemy.exc.DBAPIError as e:
                if "append-only" not in str(e.orig):
                    accepted.append(f"{name}: refused, but not by the guard ({e.orig})")
    assert not accepted, "\n".join(accepted)
    assert dump(ledger) == before


# --- readers never see a gap filled in later ------------------------------------------------------

WRITERS = 3
BATCHES_PER_WRITER = 40


def writer(
    ledger: Ledger, party: str, key: KeyPair, seed: int, errors: list[BaseException]
) -> None:
    rng = random.Random(seed)
    try:
        for b in range(BATCHES_PER_WRITER):
            events = [
                parse_event(
                    {
                        "id": f"{party}-{b}-{i}",
                        "type": "usage.recorded",
                        "actor": party,
                        "occurred_at": "2026-11-28T12:00:00.000000Z",
                        "body": {"asset": f"item-{party}", "units": 1 + i},
                    }
                )
                for i in range(rng.randint(1, 60))
            ]
            ledger.append(SignedBatch.sign(party, key, events))
    except BaseException as e:  # noqa: BLE001 - reported by the test
        errors.append(e)


class Reader:
    """Polls the log as a client would, and records whatever breaks the no-gap promise."""

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        self.last = 0
        self.polls = self.growing_polls = 0
        self.problems: list[str] = []

    def poll(self) -> None:
        with self.ledger.engine.connect() as conn:
            seqs = [
                r[0]
                for r in conn.execute(
                    text("SELECT seq FROM events WHERE seq > :last ORDER BY seq"),
                    {"last": self.last},
                )
            ]
        for seq in seqs:
            if seq != self.last + 1:
                self.problems.append(
                    f"read seq {seq} after {self.last}: seq {self.last + 1} was not visible yet"
                )
            self.last = seq
        with self.ledger.engine.connect() as conn:
            top = conn.execute(text("SELECT max(seq) FROM events")).scalar_one()
        with self.ledger.engine.connect() as conn:
            below = conn.execute(
                text("SELECT count(*) FROM events WHERE seq <= :top"), {"top": top}
            ).scalar_one()
        if below != top:
            self.problems.append(f"max(seq) was {top} while only {below} seqs up to it existed")
        self.polls += 1
        self.growing_polls += bool(seqs)

    def run(self, done: threading.Event) -> None:
        while not done.is_set():
            self.poll()
        self.poll()


def test_readers_never_see_a_seq_behind_one_already_read(ledger: Ledger, db_url: str) -> None:
    m = Market(ledger)
    parties = [f"w{i}" for i in range(WRITERS)]
    for p in parties:
        m.party(p, "creator")
        m.do(p, "register_asset", f"item-{p}", "data")
    start = ledger.head().size
    writers_ledgers = [Ledger.open(db_url) for _ in parties]
    reader_ledger = Ledger.open(db_url)
    errors: list[BaseException] = []
    done = threading.Event()
    reader = Reader(reader_ledger)
    reader.last = start
    threads = [
        threading.Thread(target=writer, args=(led, p, m.keys[p], i, errors))
        for i, (led, p) in enumerate(zip(writers_ledgers, parties, strict=True))
    ]
    polling = threading.Thread(target=reader.run, args=(done,))
    began = time.monotonic()
    polling.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    done.set()
    polling.join()
    elapsed = time.monotonic() - began
    for led in (*writers_ledgers, reader_ledger):
        led.close()
    assert not errors, errors
    size = ledger.head().size
    appended = size - start
    FIGURES.append(
        f"no-gap reads on {ledger.dialect}: {reader.polls} polls ({reader.growing_polls} saw new "
        f"events) while {WRITERS} writers appended {appended} events in "
        f"{WRITERS * BATCHES_PER_WRITER} batches in {elapsed:.1f}s; "
        f"{len(reader.problems)} seqs seen out of order"
    )
    assert not reader.problems, "\n".join(reader.problems[:20])
    assert reader.last == size
    assert reader.growing_polls >= 5, "the reader must have watched the log grow"
    with ledger.engine.connect() as conn:
        seqs = [r[0] for r in conn.execute(text("SELECT seq FROM events ORDER BY seq"))]
    assert seqs == list(range(1, size + 1))
    ledger.verify()


@pytest.mark.parametrize("table", ["events", "batches"])
def test_guards_survive_a_rebuild_and_a_restore(ledger: Ledger, table: str, tmp_path: Any) -> None:
    """Rebuilding projections and restoring an export keep the triggers in place."""
    worked_example(Market(ledger))
    ledger.rebuild()
    copy = Ledger.open(f"sqlite:///{tmp_path / 'restored.db'}")
    try:
        copy.restore(list(ledger.records()), "USD")
        for led in (ledger, copy):
            refused = pytest.raises(sqlalchemy.exc.DBAPIError, match="append-only")
            with refused, led.engine.begin() as conn:
                conn.execute(text(f"DELETE FROM {table}"))
    finally:
        copy.close()
