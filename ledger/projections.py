"""Projection rows: the mapping between rule-state values and the read tables, both ways.

`DbSource` reads committed rows for the rules; `write_effects` writes what a batch of events
changed, one executemany per table.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from fractions import Fraction
from typing import Any

from sqlalchemy import and_, bindparam, func, select, update
from sqlalchemy.engine import Connection, Row

from . import schema as s
from .bulk import insert_rows
from .canonical import canonical_bytes
from .rules import Asset, Edge, Effect, Grant, Party, UsageRow

_CHUNK = 500  # ids per IN (...) list


def _chunks(ids: Sequence[str]) -> Iterable[Sequence[str]]:
    for i in range(0, len(ids), _CHUNK):
        yield ids[i : i + _CHUNK]


def _json_text(value: Any) -> str:
    return canonical_bytes(value).decode()


class DbSource:
    """Committed projection rows, read through one connection."""

    def __init__(self, conn: Connection) -> None:
        self._conn = conn

    def load_parties(self, ids: Iterable[str]) -> dict[str, Party]:
        out = {}
        for chunk in _chunks(list(ids)):
            q = select(s.parties).where(s.parties.c.party.in_(chunk))
            out.update({r.party: party_from_row(r) for r in self._conn.execute(q)})
        return out

    def load_assets(self, ids: Iterable[str]) -> dict[str, Asset]:
        out = {}
        for chunk in _chunks(list(ids)):
            q = select(s.assets).where(s.assets.c.asset.in_(chunk))
            out.update({r.asset: asset_from_row(r) for r in self._conn.execute(q)})
        return out

    def load_grants(self, ids: Iterable[str]) -> dict[str, Grant]:
        out = {}
        for chunk in _chunks(list(ids)):
            q = select(s.grants).where(s.grants.c.grant.in_(chunk))
            out.update({r.grant: grant_from_row(r) for r in self._conn.execute(q)})
        return out

    def load_use_grants(self, asset: str, grantee: str) -> list[Grant]:
        g = s.grants.c
        q = select(s.grants).where(
            and_(g.asset == asset, g.grantee.in_([grantee, "*"]), g.revoked_seq.is_(None))
        )
        return [grant_from_row(r) for r in self._conn.execute(q)]


def party_from_row(r: Row[Any]) -> Party:
    return Party(r.party, r.kind, r.name, r.public_key, r.seq)


def asset_from_row(r: Row[Any]) -> Asset:
    meta = json.loads(r.metadata) if r.metadata is not None else None
    return Asset(r.asset, r.kind, r.owner, r.seq, r.content_hash, r.uri, meta, r.parents)


def grant_from_row(r: Row[Any]) -> Grant:
    return Grant(
        grant=r.grant,
        asset=r.asset,
        grantor=r.grantor,
        grantee=r.grantee,
        purposes=frozenset(r.purposes.split(",")),
        terms=json.loads(r.terms),
        valid_from=r.valid_from,
        valid_until=r.valid_until,
        seq=r.seq,
        revoked_seq=r.revoked_seq,
    )


def edge_from_row(r: Row[Any]) -> Edge:
    norm = Fraction(int(r.norm_num), int(r.norm_den))
    return Edge(r.child, r.parent, r.weight, norm, r.grant, r.share, json.loads(r.terms), r.seq)


def write_effects(
    conn: Connection, effects: Sequence[Effect], uses: Sequence[UsageRow] = ()
) -> None:
    """Insert and update the projection rows that `effects` describe, in log order, and the
    usage rows `uses` checked apart from them (`rules.check_usage`)."""
    new_parties, rotated, new_assets, new_grants, revoked, edges, usage = _split(effects)
    usage.extend(uses)
    if new_parties:
        conn.execute(s.parties.insert(), [_party_row(p) for p in new_parties])
    for p in rotated:  # rare: one statement each keeps the order of rotations
        conn.execute(
            update(s.parties).where(s.parties.c.party == p.party).values(public_key=p.public_key)
        )
    if new_assets:
        conn.execute(s.assets.insert(), [_asset_row(a) for a in new_assets])
    if new_grants:
        conn.execute(s.grants.insert(), [_grant_row(g) for g in new_grants])
    if revoked:
        stmt = (
            update(s.grants)
            .where(s.grants.c.grant == bindparam("g"))
            .values(revoked_seq=bindparam("r"))
        )
        conn.execute(stmt, [{"g": g.grant, "r": g.revoked_seq} for g in revoked])
    if edges:
        conn.execute(s.edges.insert(), [_edge_row(e) for e in edges])
    if usage:
        groups = _usage_groups(conn, usage)
        insert_rows(conn, s.usage, [(*u, groups[(u[1], u[2], u[3])]) for u in usage])


def _usage_groups(
    conn: Connection, usage: Sequence[UsageRow]
) -> dict[tuple[str, str, str | None], int]:
    """The group id of each (asset, actor, grant) in `usage`; new ones are numbered after the
    last in the order they first appear (the writer holds the log, so numbers never clash)."""
    wanted = list(dict.fromkeys((u[1], u[2], u[3]) for u in usage))
    g = s.usage_groups.c
    known: dict[tuple[str, str, str | None], int] = {}
    for chunk in _chunks(sorted({asset for asset, _, _ in wanted})):
        q = select(g.group_id, g.asset, g.actor, g.grant).where(g.asset.in_(chunk))
        known.update({(r.asset, r.actor, r.grant): r.group_id for r in conn.execute(q)})
    new = [key for key in wanted if key not in known]
    if new:
        last = int(conn.execute(select(func.max(g.group_id))).scalar() or 0)
        numbered = {key: last + i for i, key in enumerate(new, start=1)}
        rows = [{"group_id": n, "asset": a, "actor": actor, "grant": grant}
                for (a, actor, grant), n in numbered.items()]  # fmt: skip
        conn.execute(s.usage_groups.insert(), rows)
        known.update(numbered)
    return known


def _split(effects: Sequence[Effect]) -> tuple[list[Any], ...]:
    new_parties: list[Party] = []
    rotated: list[Party] = []
    new_assets: list[Asset] = []
    new_grants: list[Grant] = []
    revoked: list[Grant] = []
    edges: list[Edge] = []
    usage: list[tuple[Any, ...]] = []
    for e in effects:
        if e.usage is not None:
            u = e.usage
            usage.append((u.seq, u.asset, u.actor, u.grant, u.units, u.revenue))
            continue
        if e.party is not None:
            new_parties.append(e.party)
        if e.rotated is not None:
            rotated.append(e.rotated)
        if e.asset is not None:
            new_assets.append(e.asset)
        if e.grant is not None:
            new_grants.append(e.grant)
        if e.revoked is not None:
            revoked.append(e.revoked)
        edges.extend(e.edges)
    return new_parties, rotated, new_assets, new_grants, revoked, edges, usage


def _party_row(p: Party) -> dict[str, Any]:
    return {
        "party": p.party,
        "kind": p.kind,
        "name": p.name,
        "public_key": p.public_key,
        "seq": p.seq,
    }


def _asset_row(a: Asset) -> dict[str, Any]:
    meta = _json_text(a.metadata) if a.metadata is not None else None
    return {
        "asset": a.asset,
        "kind": a.kind,
        "owner": a.owner,
        "content_hash": a.content_hash,
        "uri": a.uri,
        "metadata": meta,
        "parents": a.parents,
        "seq": a.seq,
    }


def _grant_row(g: Grant) -> dict[str, Any]:
    return {
        "grant": g.grant,
        "asset": g.asset,
        "grantor": g.grantor,
        "grantee": g.grantee,
        "purposes": ",".join(sorted(g.purposes)),
        "terms": _json_text(g.terms),
        "valid_from": g.valid_from,
        "valid_until": g.valid_until,
        "seq": g.seq,
        "revoked_seq": g.revoked_seq,
    }


def _edge_row(e: Edge) -> dict[str, Any]:
    return {
        "child": e.child,
        "parent": e.parent,
        "weight": e.weight,
        "norm_num": str(e.norm.numerator),
        "norm_den": str(e.norm.denominator),
        "grant": e.grant,
        "share": e.share,
        "terms": _json_text(e.terms),
        "seq": e.seq,
    }
