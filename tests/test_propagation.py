"""Property tests of the cycle on random lineage graphs, over an in-memory source (no database)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.rules import Grant
from settlement.cycle import (
    CycleSource,
    LineageEdge,
    UsageGroup,
    build_statements,
    compute,
    statement_lines,
)
from settlement.pricing import royalty, tiered_charge, usage_fee


class MemorySource:
    """A CycleSource over plain dicts: assets -> owner, child -> [(parent, weight, share)]."""

    def __init__(self, owners: dict[str, str], parents: dict[str, list[tuple[str, int, str]]],
                 groups: list[UsageGroup], grants: dict[str, Grant]) -> None:  # fmt: skip
        self._owners, self._parents, self._groups, self._grants = owners, parents, groups, grants

    def usage_groups(self, cut_prev: int, cut: int) -> Iterable[UsageGroup]:
        return list(self._groups)

    def owners(self, assets: Sequence[str]) -> dict[str, tuple[str, bool]]:
        return {a: (self._owners[a], bool(self._parents.get(a))) for a in assets}

    def grants(self, ids: Sequence[str]) -> dict[str, Grant]:
        return {i: self._grants[i] for i in ids}

    def minimum_grants(self, cut_prev: int, cut: int) -> list[Grant]:
        return []

    def lineage(self, children: Sequence[str], cut: int) -> dict[str, list[LineageEdge]]:
        out = {}
        for child in children:
            ps = self._parents.get(child, [])
            total = sum(w for _, w, _ in ps)
            out[child] = [
                LineageEdge(child, p, self._owners[p], bool(self._parents.get(p)),
                            Fraction(w, total), Fraction(s))
                for p, w, s in ps
            ]  # fmt: skip
        return out


@st.composite
def markets(draw: st.DrawFn) -> MemorySource:
    """A random DAG: asset i may derive from any assets j < i (so it is acyclic), any depth."""
    n = draw(st.integers(2, 40))
    owners = {f"a{i}": f"p{draw(st.integers(0, 6))}" for i in range(n)}
    parents: dict[str, list[tuple[str, int, str]]] = {}
    for i in range(1, n):
        chosen = draw(st.sets(st.integers(0, i - 1), max_size=min(i, 5)))
        parents[f"a{i}"] = [
            (f"a{j}", draw(st.integers(1, 10_000)),
             draw(st.sampled_from(["0", "0.1", "0.5", "1", "0.333333", "0.9999999"])))
            for j in sorted(chosen)
        ]  # fmt: skip
    terms = {"share": "0.3", "per_unit": "0.0007"}
    grant = Grant("g", "a0", "p0", "user", frozenset({"infer"}), terms,
                  "2026-01-01T00:00:00.000000Z", None, 1)  # fmt: skip
    groups = []
    for i in draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=8)):
        asset = f"a{i}"
        units = draw(st.integers(0, 10**6))
        revenue = draw(st.integers(0, 10**12))
        if draw(st.booleans()):
            groups.append(UsageGroup(asset, owners[asset], None, units, revenue))
        else:
            g = Grant("g" + asset, asset, owners[asset], "user", frozenset({"infer"}),
                      grant.terms, grant.valid_from, None, 1)  # fmt: skip
            groups.append(UsageGroup(asset, "user", g.grant, units, revenue))
    grants = {g.grant: Grant(g.grant, g.asset, owners[g.asset], "user", frozenset({"infer"}),
                             grant.terms, grant.valid_from, None, 1)
              for g in groups if g.grant}  # fmt: skip
    owners["user"] = "user"
    return MemorySource(owners, parents, groups, grants)


@settings(max_examples=300, deadline=None)
@given(markets())
def test_value_is_conserved_on_random_lineage(src: MemorySource) -> None:
    cycle = compute(src, 1, 0, 100)
    arrived = cycle.arrived_from_use
    assert arrived == sum(cycle.retained.values())
    for p in cycle.postings:
        assert p.payer and p.payee and p.amount > 0
    assert all(v >= 0 for v in cycle.retained.values())
    # Statements: every party's retained lines add up to what it retained, in micros.
    for st_ in build_statements(cycle, "USD", b"\0" * 32):
        assert st_["totals"]["retained"] == sum(
            line["amount"] for line in st_["lines"] if line["kind"] == "retained"
        )


@settings(max_examples=100, deadline=None)
@given(markets())
def test_cycle_is_deterministic(src: MemorySource) -> None:
    first = statement_lines(compute(src, 1, 0, 100))
    second = statement_lines(compute(src, 1, 0, 100))
    assert first == second


def test_source_protocol_is_satisfied() -> None:
    src: CycleSource = MemorySource({}, {}, [], {})
    assert list(src.usage_groups(0, 0)) == []


@given(st.integers(0, 10**7), st.integers(1, 10**6), st.integers(1, 10**6),
       st.sampled_from(["0", "0.5", "1", "0.1234567"]))  # fmt: skip
def test_royalty_is_the_floor_of_the_exact_product(v: int, w: int, total: int, s: str) -> None:
    weight = Fraction(w, w + total)
    exact = v * weight * Fraction(s)
    assert royalty(v, weight, Fraction(s)) == exact.numerator // exact.denominator


def test_tiers_are_graduated() -> None:
    tiers = [{"up_to": 1000, "per_unit": "0.002"}, {"up_to": 10000, "per_unit": "0.0015"},
             {"up_to": None, "per_unit": "0.001"}]  # fmt: skip
    assert tiered_charge(500, tiers) == 500 * 2000
    assert tiered_charge(12000, tiers) == 1000 * 2000 + 9000 * 1500 + 2000 * 1000
    assert usage_fee({"tiers": tiers, "minimum": 5_000_000}, 1500, 0) == 5_000_000
    assert usage_fee({"tiers": tiers, "share": "0.5"}, 0, 3) == 1  # floor(1.5)
