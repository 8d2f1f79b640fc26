"""The equity report: of the value that arrived from use in a run, who ended with it, by kind."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from fractions import Fraction

from sqlalchemy import func, select

from ledger import Ledger
from ledger.errors import InvalidEvent
from ledger.schema import parties

from . import schema
from .run import ensure_tables, last_run

KINDS = ("creator", "aggregator", "developer", "deployer", "collective", "operator")


@dataclass(frozen=True)
class EquityRow:
    kind: str
    parties: int
    retained: int
    share: Fraction

    def percent(self) -> str:
        value = Decimal(self.share.numerator) / Decimal(self.share.denominator) * 100
        return str(value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN))


@dataclass(frozen=True)
class Equity:
    run: int
    arrived: int
    rows: list[EquityRow]

    def as_json(self) -> dict[str, object]:
        return {
            "run": self.run,
            "arrived": self.arrived,
            "kinds": [
                {
                    "kind": r.kind,
                    "parties": r.parties,
                    "retained": r.retained,
                    "share": f"{r.share.numerator}/{r.share.denominator}",
                    "percent": r.percent(),
                }
                for r in self.rows
            ],
        }


def equity(ledger: Ledger, run: int | None = None) -> Equity:
    ensure_tables(ledger)
    if run is None:
        run = last_run(ledger)[0]
        if run == 0:
            raise InvalidEvent(None, "run", "no run has been settled yet; run `edvex settle run`")
    st, p = schema.statements.c, parties.c
    with ledger.engine.connect() as conn:
        arrived = conn.execute(
            select(schema.runs.c.arrived).where(schema.runs.c.run == run)
        ).scalar_one_or_none()
        if arrived is None:
            raise InvalidEvent(None, "run", f"no run {run}")
        q = (
            select(p.kind, func.count(), func.sum(st.total_retained))
            .join_from(schema.statements, parties, p.party == st.party)
            .where(st.run == run, st.total_retained > 0)
            .group_by(p.kind)
        )
        found = {kind: (int(n), int(total)) for kind, n, total in conn.execute(q)}
    rows = [
        EquityRow(
            kind,
            found.get(kind, (0, 0))[0],
            found.get(kind, (0, 0))[1],
            Fraction(found.get(kind, (0, 0))[1], arrived) if arrived else Fraction(0),
        )
        for kind in KINDS
        if kind in found or kind in ("creator", "aggregator", "developer", "deployer")
    ]
    return Equity(run, int(arrived), rows)
