"""The cycle's reads from the ledger's projection tables, aggregated in SQL.

Usage is summed with GROUP BY in the database; Python sees one row per (asset, actor, grant) and
one row per lineage edge that carries value, never one row per usage event.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from fractions import Fraction

from sqlalchemy import and_, func, or_, select
from sqlalchemy.engine import Connection

from ledger import schema as s
from ledger.events import USE_PURPOSES
from ledger.projections import grant_from_row
from ledger.rules import Grant

from .cycle import LineageEdge, UsageGroup

_CHUNK = 500


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for i in range(0, len(items), _CHUNK):
        yield items[i : i + _CHUNK]


class DbCycleSource:
    """A `CycleSource` over one connection (one snapshot on PostgreSQL's repeatable read)."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def usage_groups(self, cut_prev: int, cut: int) -> Iterator[UsageGroup]:
        """Usage summed per (asset, actor, grant): by group id over the usage rows, the one
        pass that grows with the log, then per group's columns over the few sums."""
        u, g = s.usage.c, s.usage_groups.c
        sums = (
            select(u.group_id, func.sum(u.units).label("units"),
                   func.sum(u.revenue).label("revenue"))
            .where(u.seq > cut_prev, u.seq <= cut)
            .group_by(u.group_id)
            .subquery()
        )  # fmt: skip
        q = (
            select(g.asset, g.actor, g.grant, func.sum(sums.c.units), func.sum(sums.c.revenue))
            .join_from(sums, s.usage_groups, g.group_id == sums.c.group_id)
            .group_by(g.asset, g.actor, g.grant)
            .order_by(g.asset, g.actor, func.coalesce(g.grant, ""))
        )
        for asset, actor, grant, units, revenue in self._conn.execute(q):
            yield UsageGroup(asset, actor, grant, int(units), int(revenue))

    def owners(self, assets: Sequence[str]) -> dict[str, tuple[str, bool]]:
        a = s.assets.c
        out = {}
        for chunk in _chunks(assets):
            q = select(a.asset, a.owner, a.parents).where(a.asset.in_(chunk))
            out.update({r.asset: (r.owner, r.parents > 0) for r in self._conn.execute(q)})
        return out

    def grants(self, ids: Sequence[str]) -> dict[str, Grant]:
        out = {}
        for chunk in _chunks(ids):
            q = select(s.grants).where(s.grants.c.grant.in_(chunk))
            out.update({r.grant: grant_from_row(r) for r in self._conn.execute(q)})
        return out

    def minimum_grants(self, cut_prev: int, cut: int) -> list[Grant]:
        """Grants with a minimum that were live at some point cut_prev < p <= cut."""
        g = s.grants.c
        q = select(s.grants).where(
            g.seq < cut,
            or_(g.revoked_seq.is_(None), g.revoked_seq > cut_prev),
            g.terms.like('%"minimum"%'),
        )
        out = []
        for row in self._conn.execute(q.order_by(g.seq)):
            grant = grant_from_row(row)
            # a minimum is owed for use: grants that allow infer or generate
            uses = grant.purposes & USE_PURPOSES
            if "minimum" in grant.terms and uses and self._live_in(grant, cut_prev, cut):
                out.append(grant)
        return out

    def _live_in(self, grant: Grant, cut_prev: int, cut: int) -> bool:
        # Live at p: granted before p, not revoked before p, recorded_at(p) in the window.
        lo = max(cut_prev, grant.seq)
        hi = cut if grant.revoked_seq is None else min(cut, grant.revoked_seq)
        e = s.events.c
        cond = [e.seq > lo, e.seq <= hi, e.recorded_at >= grant.valid_from]
        if grant.valid_until is not None:
            cond.append(e.recorded_at < grant.valid_until)
        return self._conn.execute(select(e.seq).where(and_(*cond)).limit(1)).first() is not None

    def lineage(self, children: Sequence[str], cut: int) -> dict[str, list[LineageEdge]]:
        e, a = s.edges.c, s.assets.c
        out: dict[str, list[LineageEdge]] = {}
        shares: dict[str, Fraction] = {}  # few distinct shares: parse each once
        weights: dict[tuple[str, str], Fraction] = {}  # and weights are often alike
        for chunk in _chunks(children):
            q = (
                select(e.child, e.parent, e.norm_num, e.norm_den, e.share, a.owner, a.parents)
                .join_from(s.edges, s.assets, a.asset == e.parent)
                .where(e.child.in_(chunk), e.seq <= cut)
                .order_by(e.child, e.parent)
            )
            for child, parent, num, den, share_text, owner, parents in self._conn.execute(q):
                share = shares.get(share_text)
                if share is None:
                    share = shares[share_text] = Fraction(share_text)
                weight = weights.get((num, den))
                if weight is None:
                    weight = weights[(num, den)] = Fraction(int(num), int(den))
                edge = LineageEdge(child, parent, owner, parents > 0, weight, share)
                out.setdefault(child, []).append(edge)
        return out
