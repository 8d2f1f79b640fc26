"""Running a settlement cycle against a ledger: compute, sign, record, close, checkpoint.

A run writes its statements, postings and the `settlement.closed` event in one transaction that
holds the head of the log, after checking that no other process closed the same run meanwhile:
two runs started at once never settle the same events twice, on SQLite or PostgreSQL.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func, insert, inspect, select
from sqlalchemy.engine import Connection

from ledger import KeyPair, Ledger, LedgerError, SignedBatch
from ledger.bulk import insert_rows
from ledger.errors import ConflictError
from ledger.events import RESERVED_ID_PREFIX, parse_event
from ledger.schema import events as events_table
from ledger.store import OPERATOR, AppendResult
from ledger.values import format_timestamp

from . import schema, statements
from .cycle import Cycle, build_statements, compute
from .source import DbCycleSource


class SettlementConflict(LedgerError):
    """Another process closed this run first; nothing was written."""

    def __init__(self, run: int) -> None:
        self.run = run
        super().__init__(f"run {run} was closed by another process meanwhile; nothing written")


@dataclass(frozen=True)
class RunResult:
    run: int | None
    cut: int
    statements: int
    arrived: int = 0
    postings: int = 0
    closed_seq: int | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "run": self.run,
            "cut": self.cut,
            "statements": self.statements,
            "arrived": self.arrived,
            "postings": self.postings,
            "closed_seq": self.closed_seq,
        }


def ensure_tables(ledger: Ledger) -> None:
    """Create settlement's tables on first use, under the log's write lock."""
    if not inspect(ledger.engine).has_table("postings"):
        with ledger.exclusive() as conn:
            schema.create(conn)


def last_run(ledger: Ledger) -> tuple[int, int]:
    """(run, cut) of the last closed run, (0, 0) before the first."""
    with ledger.engine.connect() as conn:
        row = conn.execute(
            select(schema.runs.c.run, schema.runs.c.cut).order_by(schema.runs.c.run.desc()).limit(1)
        ).first()
    return (row.run, row.cut) if row is not None else (0, 0)


def nothing_to_settle(ledger: Ledger, cut_prev: int, cut: int) -> bool:
    """True when nothing but settlement's own events came after the last cut."""
    e = events_table.c
    with ledger.engine.connect() as conn:
        other = conn.execute(
            select(e.seq)
            .where(e.seq > cut_prev, e.seq <= cut, e.type != "settlement.closed")
            .limit(1)
        ).first()
    return other is None


def compute_cycle(
    ledger: Ledger, run: int, cut_prev: int, cut: int
) -> tuple[Cycle, list[dict[str, Any]]]:
    """The cycle and its unsigned statements: a pure function of the log up to `cut`."""
    head = ledger.head()
    root = ledger.root_at(cut)
    with ledger.engine.connect() as conn:
        cycle = compute(DbCycleSource(conn), run, cut_prev, cut)
    return cycle, build_statements(cycle, head.currency, root)


def settle(ledger: Ledger, operator: KeyPair) -> RunResult:
    """Settle every event with cut_prev < seq <= cut, where cut is the log size now."""
    ensure_tables(ledger)
    run_prev, cut_prev = last_run(ledger)
    if run_prev:  # a run that died after closing still gets its checkpoint (a no-op if signed)
        ledger.checkpoint(operator, cut_prev)
    cut = ledger.head().size
    if nothing_to_settle(ledger, cut_prev, cut):
        return RunResult(None, cut, 0)
    run = run_prev + 1
    cycle, unsigned = compute_cycle(ledger, run, cut_prev, cut)
    encoded = [statements.sign_encoded(st, operator) for st in unsigned]
    signed = [st for st, _raw in encoded]
    root = statements.root_of_unsigned([(st["party"], raw) for st, raw in encoded])
    stored = [statements.signed_bytes_from(raw, st["signature"]) for st, raw in encoded]
    event = parse_event(
        {
            "id": f"{RESERVED_ID_PREFIX}settlement:run-{run}",
            "type": "settlement.closed",
            "actor": OPERATOR,
            "occurred_at": format_timestamp(ledger.clock()),
            "body": {"run": run, "cut": cut, "statements_root": root.hex()},
        }
    )

    def record(conn: Connection, result: AppendResult) -> None:
        _record_run(conn, cycle, signed, stored, root, result.seqs[0])

    try:
        result = ledger.append(SignedBatch.sign(OPERATOR, operator, [event]), within=record)
    except ConflictError as e:
        raise SettlementConflict(run) from e
    if result.duplicate:
        raise SettlementConflict(run)
    ledger.checkpoint(operator, cut)
    return RunResult(
        run, cut, len(signed), cycle.arrived_from_use, len(cycle.postings), result.seqs[0]
    )


def _record_run(
    conn: Connection,
    cycle: Cycle,
    signed: list[dict[str, Any]],
    stored: list[bytes],
    root: bytes,
    closed_seq: int,
) -> None:
    latest = conn.execute(select(func.max(schema.runs.c.run))).scalar()
    if (latest or 0) != cycle.run - 1:
        raise SettlementConflict(cycle.run)
    conn.execute(
        insert(schema.runs).values(
            run=cycle.run,
            cut_prev=cycle.cut_prev,
            cut=cycle.cut,
            statements_root=root,
            statements=len(signed),
            arrived=cycle.arrived_from_use,
            closed_seq=closed_seq,
        )
    )
    if signed:
        rows = [_statement_row(cycle.run, st, raw) for st, raw in zip(signed, stored, strict=True)]
        conn.execute(insert(schema.statements), rows)
    insert_rows(  # in the order of schema.postings.columns
        conn,
        schema.postings,
        [
            (cycle.run, n, p.payer, p.payee, p.kind, p.asset, p.via, p.grant, p.units, p.amount)
            for n, p in enumerate(cycle.postings, start=1)
        ],
    )


def _statement_row(run: int, st: Mapping[str, Any], raw: bytes) -> dict[str, Any]:
    totals = st["totals"]
    return {
        "run": run,
        "party": st["party"],
        "body": raw.decode(),
        "hash": hashlib.sha256(raw).digest(),
        "total_in": totals["in"],
        "total_out": totals["out"],
        "total_retained": totals["retained"],
    }


def list_statements(
    ledger: Ledger, run: int | None = None, party: str | None = None
) -> list[dict[str, Any]]:
    ensure_tables(ledger)
    st = schema.statements.c
    q = select(st.run, st.party, st.total_in, st.total_out, st.total_retained)
    if run is not None:
        q = q.where(st.run == run)
    if party is not None:
        q = q.where(st.party == party)
    with ledger.engine.connect() as conn:
        rows = conn.execute(q.order_by(st.run, st.party)).all()
    return [
        {
            "run": r.run,
            "party": r.party,
            "in": r.total_in,
            "out": r.total_out,
            "retained": r.total_retained,
        }
        for r in rows
    ]


def get_statement(ledger: Ledger, run: int, party: str) -> dict[str, Any] | None:
    ensure_tables(ledger)
    st = schema.statements.c
    with ledger.engine.connect() as conn:
        row = conn.execute(select(st.body).where(st.run == run, st.party == party)).first()
    return dict(json.loads(row.body)) if row is not None else None
