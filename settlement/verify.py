"""Verifying a royalty statement without trusting the operator (DESIGN.md, "Statement format").

Given a trusted operator key and the log, check the signature, check the statement's checkpoint
against the log's own Merkle tree, recompute the cycle and require identical bytes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ledger import IntegrityError, Ledger
from ledger.errors import ProofInvalid

from . import statements
from .cycle import build_statements, compute
from .source import DbCycleSource


@dataclass(frozen=True)
class Verified:
    run: int
    party: str
    lines: int
    checked_against_log: bool


class StatementMismatch(ProofInvalid):
    """The statement differs from what the log says it must be."""


def previous_cut(ledger: Ledger, run: int, upto: int) -> int:
    """The cut of run `run - 1` as the log's own settlement.closed events record it."""
    if run == 1:
        return 0
    for rec in ledger.events_of(["settlement.closed"], upto):
        if rec.body.get("run") == run - 1:
            return int(rec.body["cut"])
    raise StatementMismatch("statement", f"the log has no settlement.closed for run {run - 1}")


def verify_statement(
    statement: Mapping[str, Any], trusted_key: str, ledger: Ledger | None = None
) -> Verified:
    """Raise unless the statement is the operator's and, given a log, what the log computes."""
    st = statements.check_shape(statement)
    statements.check_signature(st, trusted_key)
    if ledger is None:
        return Verified(st["run"], st["party"], len(st["lines"]), False)
    _check_checkpoint(st, ledger)
    recomputed = _recompute(st, ledger)
    if statements.unsigned_bytes(recomputed) != statements.unsigned_bytes(st):
        raise StatementMismatch("statement", _first_difference(st, recomputed))
    return Verified(st["run"], st["party"], len(st["lines"]), True)


def _check_checkpoint(st: Mapping[str, Any], ledger: Ledger) -> None:
    size, root = st["checkpoint"]["size"], str(st["checkpoint"]["root"])
    have = ledger.head().size
    if not 0 < size <= have:
        raise StatementMismatch("checkpoint", f"the log has {have} events, not {size}")
    try:
        actual = ledger.root_at(size).hex()
    except IntegrityError as e:
        raise StatementMismatch("checkpoint", str(e)) from None
    if actual != root:
        raise StatementMismatch(
            "checkpoint", f"root at size {size} is {actual[:16]}…, statement says {root[:16]}…"
        )


def _recompute(st: Mapping[str, Any], ledger: Ledger) -> dict[str, Any]:
    run, cut = st["run"], st["cycle"]["to_seq"]
    cut_prev = previous_cut(ledger, run, ledger.head().size)
    if st["cycle"]["from_seq"] != cut_prev + 1 or st["checkpoint"]["size"] != cut:
        raise StatementMismatch(
            "statement",
            f"run {run} covers seq {cut_prev + 1}..{cut} in the log, "
            f"statement says {st['cycle']['from_seq']}..{st['checkpoint']['size']}",
        )
    for candidate in _recomputed_run(ledger, run, cut_prev, cut):
        if candidate["party"] == st["party"]:
            return candidate
    raise StatementMismatch("statement", f"the log gives party {st['party']!r} no statement")


def _recomputed_run(ledger: Ledger, run: int, cut_prev: int, cut: int) -> list[dict[str, Any]]:
    """Every statement of the run as the log computes it, after checking that the log closed
    the run at `cut` with their root."""
    with ledger.engine.connect() as conn:
        cycle = compute(DbCycleSource(conn), run, cut_prev, cut)
    built = build_statements(cycle, ledger.head().currency, ledger.root_at(cut))
    _check_closed(ledger, run, cut, built)
    return built


def _check_closed(ledger: Ledger, run: int, cut: int, built: list[dict[str, Any]]) -> None:
    """The log closed run `run` at `cut` with the root of exactly these statements."""
    closed = [r for r in ledger.events_of(["settlement.closed"], ledger.head().size)
              if r.body.get("run") == run]  # fmt: skip
    if not closed:
        raise StatementMismatch("run", f"the log has no settlement.closed for run {run}")
    body = closed[0].body
    if body.get("cut") != cut:
        raise StatementMismatch("run", f"the log closed run {run} at {body.get('cut')}, not {cut}")
    if body.get("statements_root") != statements.statements_root(built, built=True).hex():
        raise StatementMismatch("run", "statements root differs from the settlement.closed event")


def _first_difference(got: Mapping[str, Any], want: Mapping[str, Any]) -> str:
    for key in ("party", "currency", "cycle", "checkpoint", "totals"):
        if got.get(key) != want.get(key):
            return f"{key} differs (statement {got.get(key)!r}, log {want.get(key)!r})"
    got_lines, want_lines = list(got.get("lines", [])), list(want.get("lines", []))
    for i, (a, b) in enumerate(zip(got_lines, want_lines, strict=False)):
        if a != b:
            return f"line {i + 1} differs (statement {a!r}, log {b!r})"
    if len(got_lines) != len(want_lines):
        return f"statement has {len(got_lines)} lines, the log gives {len(want_lines)}"
    return "bytes differ"


def verify_run(
    ledger: Ledger, run: int, trusted_key: str, stored: Sequence[Mapping[str, Any]]
) -> int:
    """Check every statement of a run at once: one recomputation, every signature, every byte,
    and the statements root that the log's settlement.closed event carries."""
    recomputed: dict[str, dict[str, Any]] = {}
    for st in stored:
        statements.check_shape(st)
        statements.check_signature(st, trusted_key)
        if not recomputed:
            cut_prev = previous_cut(ledger, run, ledger.head().size)
            cut = int(st["cycle"]["to_seq"])
            _check_checkpoint(st, ledger)
            recomputed = {b["party"]: b for b in _recomputed_run(ledger, run, cut_prev, cut)}
            if len(recomputed) != len(stored):
                raise StatementMismatch(
                    "run", f"{len(stored)} statements, the log gives {len(recomputed)}"
                )
        want = recomputed.get(st["party"])
        if want is None or statements.unsigned_bytes(want) != statements.unsigned_bytes(st):
            detail = _first_difference(st, want) if want else "party has no statement"
            raise StatementMismatch("statement", f"party {st['party']!r}: {detail}")
    return len(stored)
