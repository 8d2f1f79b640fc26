"""One settlement cycle as a pure function of the log up to `cut` (DESIGN.md, "Settlement").

Step 1 prices the cycle's usage groups (aggregated by the source in SQL); step 2 sends value from
descendants to ancestors along lineage; step 3 checks conservation; step 4 turns postings into
per-party statement lines. The source does the reading; nothing here touches a database.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from fractions import Fraction
from typing import Any, NamedTuple, Protocol

from ledger.errors import IntegrityError
from ledger.rules import Grant

from . import statements
from .pricing import royalty, usage_fee


@dataclass(frozen=True)
class UsageGroup:
    asset: str
    actor: str
    grant: str | None
    units: int
    revenue: int


class LineageEdge(NamedTuple):  # tuples: a dataset may have a million parents
    child: str
    parent: str
    parent_owner: str
    parent_has_parents: bool
    weight: Fraction
    share: Fraction


class Posting(NamedTuple):
    payer: str
    payee: str
    kind: str  # "fee" or "royalty"
    asset: str  # fee: the asset used; royalty: the parent receiving
    via: str  # fee: the asset used; royalty: the child paying up
    amount: int
    grant: str | None = None
    units: int | None = None


class CycleSource(Protocol):
    """What a cycle reads from the log's projections, all as of `cut`."""

    def usage_groups(self, cut_prev: int, cut: int) -> Iterable[UsageGroup]: ...
    def owners(self, assets: Sequence[str]) -> dict[str, tuple[str, bool]]: ...
    def grants(self, ids: Sequence[str]) -> dict[str, Grant]: ...
    def minimum_grants(self, cut_prev: int, cut: int) -> list[Grant]: ...
    def lineage(self, children: Sequence[str], cut: int) -> dict[str, list[LineageEdge]]: ...


@dataclass
class Cycle:
    run: int
    cut_prev: int
    cut: int
    postings: list[Posting] = field(default_factory=list)
    revenue: dict[tuple[str, str], tuple[int, int]] = field(default_factory=dict)
    arrived: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    retained: dict[str, int] = field(default_factory=dict)
    owner: dict[str, str] = field(default_factory=dict)
    has_parents: dict[str, bool] = field(default_factory=dict)

    @property
    def arrived_from_use(self) -> int:
        return sum(amount for _, amount in self.revenue.values()) + sum(
            p.amount for p in self.postings if p.kind == "fee"
        )


def compute(src: CycleSource, run: int, cut_prev: int, cut: int) -> Cycle:
    """Steps 1 to 3 of DESIGN.md's settlement for the events cut_prev < seq <= cut."""
    cycle = Cycle(run, cut_prev, cut)
    value = _value_from_use(src, cycle)
    _propagate(src, cycle, value)
    _check_conservation(cycle)
    return cycle


def _value_from_use(src: CycleSource, cycle: Cycle) -> dict[str, int]:
    """Step 1: the owner's own revenue, and fees under grants (minimums included)."""
    groups = list(src.usage_groups(cycle.cut_prev, cycle.cut))
    minimums = src.minimum_grants(cycle.cut_prev, cycle.cut)
    grant_ids = sorted({g.grant for g in groups if g.grant is not None})
    grants = src.grants(grant_ids)
    assets = sorted({g.asset for g in groups} | {g.asset for g in minimums})
    owners = src.owners(assets)
    for asset, (owner, has_parents) in owners.items():
        cycle.owner[asset] = owner
        cycle.has_parents[asset] = has_parents
    value: dict[str, int] = defaultdict(int)
    used: set[tuple[str, str]] = set()
    for g in groups:
        owner = cycle.owner[g.asset]
        if g.grant is None:  # the owner's own use: revenue arrives, no money moves
            if g.revenue:
                cycle.revenue[(owner, g.asset)] = (g.units, g.revenue)
                value[g.asset] += g.revenue
            continue
        used.add((g.grant, g.actor))
        fee = usage_fee(grants[g.grant].terms, g.units, g.revenue)
        _fee(cycle, value, g.actor, owner, g.asset, g.grant, g.units, fee)
    for m in minimums:
        if (m.grant, m.grantee) not in used:
            fee = int(m.terms["minimum"])
            _fee(cycle, value, m.grantee, cycle.owner[m.asset], m.asset, m.grant, 0, fee)
    return value


def _fee(
    cycle: Cycle,
    value: dict[str, int],
    payer: str,
    payee: str,
    asset: str,
    grant: str,
    units: int,
    fee: int,
) -> None:
    if fee > 0:
        cycle.postings.append(Posting(payer, payee, "fee", asset, asset, fee, grant, units))
        value[asset] += fee


def _propagate(src: CycleSource, cycle: Cycle, value: dict[str, int]) -> None:
    """Step 2: visit assets from descendants to ancestors; each pays floor(V x w x s) up."""
    edges = _ancestry(src, cycle, list(value))
    waiting: dict[str, int] = defaultdict(int)  # children that have yet to pay into an asset
    for parent_edges in edges.values():
        for e in parent_edges:
            waiting[e.parent] += 1
    ready = [a for a in set(value) | set(edges) if waiting[a] == 0]
    heapq.heapify(ready)
    while ready:
        asset = heapq.heappop(ready)
        v = value.get(asset, 0)
        cycle.arrived[asset] = v
        paid = 0
        for e in edges.get(asset, ()):
            amount = royalty(v, e.weight, e.share)
            if amount > 0:
                cycle.postings.append(
                    Posting(cycle.owner[asset], e.parent_owner, "royalty", e.parent, asset, amount)
                )
                value[e.parent] = value.get(e.parent, 0) + amount
                paid += amount
            waiting[e.parent] -= 1
            if waiting[e.parent] == 0:
                heapq.heappush(ready, e.parent)
        if v:
            cycle.retained[asset] = v - paid


def _ancestry(src: CycleSource, cycle: Cycle, start: list[str]) -> dict[str, list[LineageEdge]]:
    """Every lineage edge above the assets that received value, loaded one level at a time."""
    edges: dict[str, list[LineageEdge]] = {}
    level = [a for a in start if cycle.has_parents.get(a, False)]
    while level:
        loaded = src.lineage(sorted(level), cycle.cut)
        edges.update(loaded)
        nxt = set()
        for parent_edges in loaded.values():
            for e in parent_edges:
                cycle.owner.setdefault(e.parent, e.parent_owner)
                if e.parent_has_parents and e.parent not in edges:
                    nxt.add(e.parent)
        level = sorted(nxt)
    return edges


def _check_conservation(cycle: Cycle) -> None:
    """Step 3: value arriving from use equals the total retained by all owners."""
    arrived, kept = cycle.arrived_from_use, sum(cycle.retained.values())
    if arrived != kept:
        raise IntegrityError(None, "conservation", f"{arrived} micros arrived, {kept} retained")


def statement_lines(cycle: Cycle) -> dict[str, list[dict[str, Any]]]:
    """Step 4: each party's lines, from its postings, own revenue and retained value."""
    lines: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for (owner, asset), (units, amount) in cycle.revenue.items():
        lines[owner].append(_line("revenue", asset, owner, asset, amount, units))
    for p in cycle.postings:
        if p.kind == "fee":
            lines[p.payer].append(
                _line("fee_out", p.asset, p.payee, p.via, p.amount, p.units, p.grant)
            )
            lines[p.payee].append(
                _line("fee_in", p.asset, p.payer, p.via, p.amount, p.units, p.grant)
            )
        else:
            lines[p.payer].append(_line("royalty_out", p.via, p.payee, p.asset, p.amount))
            lines[p.payee].append(_line("royalty_in", p.asset, p.payer, p.via, p.amount))
    for asset, amount in cycle.retained.items():
        owner = cycle.owner[asset]
        lines[owner].append(_line("retained", asset, owner, asset, amount))
    return lines


def _line(
    kind: str,
    asset: str,
    counterparty: str,
    via: str,
    amount: int,
    units: int | None = None,
    grant: str | None = None,
) -> dict[str, Any]:
    line: dict[str, Any] = {
        "kind": kind,
        "asset": asset,
        "counterparty": counterparty,
        "via": via,
        "amount": amount,
    }
    if units is not None:
        line["units"] = units
    if grant is not None:
        line["grant"] = grant
    return line


def build_statements(cycle: Cycle, currency: str, root: bytes) -> list[dict[str, Any]]:
    """Unsigned statements, one per party with any line, in party order."""
    return [
        statements.build(
            run=cycle.run,
            party=party,
            currency=currency,
            from_seq=cycle.cut_prev + 1,
            to_seq=cycle.cut,
            root=root,
            lines=lines,
        )
        for party, lines in sorted(statement_lines(cycle).items())
    ]
