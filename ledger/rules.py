"""The rules of DESIGN.md's event table, checked at append in log order.

`State` is the ledger's view of parties, assets and grants at a point of the log: an overlay of
what the current batch changed on top of what a `StateSource` (the projection tables) holds.
`check` validates one event against it and returns the projection rows the event produces;
`State.apply` makes those rows visible to the events after it. No I/O here: the store passes a
source that reads the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from fractions import Fraction
from itertools import chain
from typing import Any, Protocol

from . import events as ev
from .errors import RuleViolation
from .values import as_fraction


@dataclass(frozen=True)
class Party:
    party: str
    kind: str
    name: str
    public_key: str
    seq: int


@dataclass(frozen=True)
class Asset:
    asset: str
    kind: str
    owner: str
    seq: int
    content_hash: str | None = None
    uri: str | None = None
    metadata: dict[str, Any] | None = None
    parents: int = 0


@dataclass(frozen=True)
class Grant:
    grant: str
    asset: str
    grantor: str
    grantee: str
    purposes: frozenset[str]
    terms: dict[str, Any]
    valid_from: str
    valid_until: str | None
    seq: int
    revoked_seq: int | None = None

    def live_at(self, recorded_at: str) -> bool:
        """DESIGN.md: not revoked, and recorded_at within [valid_from, valid_until)."""
        if self.revoked_seq is not None or recorded_at < self.valid_from:
            return False
        return self.valid_until is None or recorded_at < self.valid_until


@dataclass(frozen=True)
class Edge:
    child: str
    parent: str
    weight: str
    norm: Fraction
    grant: str
    share: str
    terms: dict[str, Any]
    seq: int


@dataclass(frozen=True)
class Usage:
    seq: int
    asset: str
    actor: str
    grant: str | None
    units: int
    revenue: int


@dataclass
class Effect:
    """What one event changes in the projections."""

    party: Party | None = None
    rotated: Party | None = None
    asset: Asset | None = None
    grant: Grant | None = None
    revoked: Grant | None = None
    edges: list[Edge] = field(default_factory=list)
    usage: Usage | None = None


class StateSource(Protocol):
    """Reads committed projection rows (the store implements it over the database)."""

    def load_parties(self, ids: Iterable[str]) -> dict[str, Party]: ...
    def load_assets(self, ids: Iterable[str]) -> dict[str, Asset]: ...
    def load_grants(self, ids: Iterable[str]) -> dict[str, Grant]: ...
    def load_use_grants(self, asset: str, grantee: str) -> list[Grant]: ...


class EmptySource:
    """A source for a log replayed from nothing."""

    def load_parties(self, ids: Iterable[str]) -> dict[str, Party]:
        return {}

    def load_assets(self, ids: Iterable[str]) -> dict[str, Asset]:
        return {}

    def load_grants(self, ids: Iterable[str]) -> dict[str, Grant]:
        return {}

    def load_use_grants(self, asset: str, grantee: str) -> list[Grant]:
        return []


class State:
    """Parties, assets and grants as the events so far left them."""

    def __init__(self, source: StateSource) -> None:
        self._source = source
        self._parties: dict[str, Party | None] = {}
        self._assets: dict[str, Asset | None] = {}
        self._grants: dict[str, Grant | None] = {}
        self._use_grants: dict[tuple[str, str], list[str]] = {}
        self._made_on: dict[str, set[str]] = {}
        # (asset, actor, named grant, recorded_at) -> the grant a use resolved to
        self.resolved: dict[tuple[str, str, str | None, str], str | None] = {}

    def prefetch(
        self, bodies: Iterable[Any], usage_bodies: Iterable[ev.UsageRecordedBody] = ()
    ) -> None:
        """Load in one query per table what a batch will look up (asset and grant ids): the
        bodies of its events, and the distinct bodies of its `UsageEntry`s."""
        asset_ids: set[str] = set()
        grant_ids: set[str] = set()
        for body in chain(bodies, usage_bodies):
            if type(body) is ev.UsageRecordedBody:  # most events: one type test
                asset_ids.add(body.asset)
                if body.grant is not None:
                    grant_ids.add(body.grant)
                continue
            if isinstance(body, ev.ConsentGrantedBody):
                asset_ids.add(body.asset)
            if isinstance(body, ev.AssetDerivedBody):
                asset_ids.update(p.asset for p in body.parents)
                grant_ids.update(p.grant for p in body.parents)
            if isinstance(body, ev.ConsentRevokedBody) and body.grant:
                grant_ids.add(body.grant)
        self._fill(self._assets, asset_ids, self._source.load_assets)
        self._fill(self._grants, grant_ids, self._source.load_grants)

    @staticmethod
    def _fill(cache: dict[str, Any], ids: set[str], load: Any) -> None:
        missing = [i for i in ids if i not in cache]
        if missing:
            found = load(missing)
            for i in missing:
                cache[i] = found.get(i)

    def party(self, party: str) -> Party | None:
        if party not in self._parties:
            self._parties[party] = self._source.load_parties([party]).get(party)
        return self._parties[party]

    def asset(self, asset: str) -> Asset | None:
        if asset not in self._assets:
            self._assets[asset] = self._source.load_assets([asset]).get(asset)
        return self._assets[asset]

    def grant(self, grant: str) -> Grant | None:
        if grant not in self._grants:
            self._grants[grant] = self._source.load_grants([grant]).get(grant)
        return self._grants[grant]

    def use_grants(self, asset: str, grantee: str) -> list[Grant]:
        """Unrevoked grants on `asset` naming `grantee` or anyone, as known now."""
        key = (asset, grantee)
        if key not in self._use_grants:
            ids = []
            for g in self._source.load_use_grants(asset, grantee):
                self._grants.setdefault(g.grant, g)  # a version changed in this batch wins
                ids.append(g.grant)
            # grants this State made itself (earlier in the batch, or in a replay)
            ids += [
                gid
                for gid in sorted(self._made_on.get(asset, ()))
                if gid not in ids and self._grants[gid].grantee in (grantee, ev.ANYONE)  # type: ignore[union-attr]
            ]
            self._use_grants[key] = ids
        current = (self._grants[g] for g in self._use_grants[key])
        return [g for g in current if g is not None and g.revoked_seq is None]

    def apply(self, effect: Effect) -> None:
        if effect.usage is not None:
            return  # a use changes nothing the rules read
        self.resolved.clear()  # grants, assets or parties changed: resolve uses anew
        for party in (effect.party, effect.rotated):
            if party is not None:
                self._parties[party.party] = party
        if effect.asset is not None:
            self._assets[effect.asset.asset] = effect.asset
        if effect.revoked is not None:
            self._grants[effect.revoked.grant] = effect.revoked
        if effect.grant is not None:
            self._add_grant(effect.grant)

    def _add_grant(self, grant: Grant) -> None:
        self._grants[grant.grant] = grant
        self._made_on.setdefault(grant.asset, set()).add(grant.grant)
        for (asset, grantee), cached in self._use_grants.items():
            if asset == grant.asset and grant.grantee in (grantee, ev.ANYONE):
                cached.append(grant.grant)


def check_signer(actor: str, key: str, first: ev.Event, state: State) -> None:
    """The batch key must be the actor's current key, or the key its first event registers."""
    party = state.party(actor)
    if party is not None:
        if party.public_key != key:
            raise RuleViolation(first.id, "actor", "signed-by-current-key", f"party {actor!r}")
        return
    body = first.body
    if not isinstance(body, ev.PartyRegisteredBody):
        raise RuleViolation(first.id, "actor", "actor-registered", f"no party {actor!r}")
    if body.public_key != key:
        raise RuleViolation(first.id, "body.public_key", "self-certifying-registration")


def check(e: ev.Event, seq: int, recorded_at: str, state: State) -> Effect:
    """Validate one event at `seq` against `state`; return what it changes."""
    _not_reserved(e)
    if type(e) is ev.UsageRecorded:
        return Effect(usage=Usage(*_usage_row(e, seq, recorded_at, state)))
    if not isinstance(e, ev.PartyRegistered):
        _registered_actor(e, state)
    match e:
        case ev.PartyRegistered():
            return _party_registered(e, seq, state)
        case ev.PartyKeyRotated():
            return _key_rotated(e, state)
        case ev.AssetRegistered():
            return _asset_registered(e, seq, state)
        case ev.ConsentGranted():
            return _consent_granted(e, seq, state)
        case ev.ConsentRevoked():
            return _consent_revoked(e, seq, recorded_at, state)
        case ev.AssetDerived():
            return _asset_derived(e, seq, recorded_at, state)
        case ev.SettlementClosed():
            return _settlement_closed(e, seq, state)
    raise AssertionError(f"unhandled event type {e.type}")  # pragma: no cover


def _registered_actor(e: ev.Event, state: State) -> Party:
    party = state.party(e.actor)
    if party is None:
        raise RuleViolation(e.id, "actor", "actor-registered", f"no party {e.actor!r}")
    return party


def _party_registered(e: ev.PartyRegistered, seq: int, state: State) -> Effect:
    b = e.body
    if b.party != e.actor:
        raise RuleViolation(e.id, "body.party", "self-certifying-registration", "party != actor")
    if b.party == ev.ANYONE:
        raise RuleViolation(e.id, "body.party", "party-id-new", "'*' means anyone")
    if state.party(b.party) is not None:
        raise RuleViolation(e.id, "body.party", "party-id-new", f"{b.party!r} exists")
    if (b.kind == "operator") != (b.party == ev.OPERATOR):
        raise RuleViolation(e.id, "body.kind", "one-operator", f"only {ev.OPERATOR!r} operates")
    return Effect(party=Party(b.party, b.kind, b.name, b.public_key, seq))


def _key_rotated(e: ev.PartyKeyRotated, state: State) -> Effect:
    b = e.body
    if b.party != e.actor:
        raise RuleViolation(e.id, "body.party", "signed-by-current-key", "party != actor")
    party = _registered_actor(e, state)
    return Effect(rotated=replace(party, public_key=b.public_key))


def _new_asset(e: ev.Event, asset: str, state: State) -> None:
    if state.asset(asset) is not None:
        raise RuleViolation(e.id, "body.asset", "asset-id-new", f"{asset!r} exists")


def _asset_registered(e: ev.AssetRegistered, seq: int, state: State) -> Effect:
    b = e.body
    _new_asset(e, b.asset, state)
    return Effect(asset=Asset(b.asset, b.kind, e.actor, seq, b.content_hash, b.uri, b.metadata))


def _consent_granted(e: ev.ConsentGranted, seq: int, state: State) -> Effect:
    b = e.body
    asset = state.asset(b.asset)
    if asset is None:
        raise RuleViolation(e.id, "body.asset", "asset-registered", f"no asset {b.asset!r}")
    if asset.owner != e.actor:
        raise RuleViolation(e.id, "body.asset", "grantor-owns-asset", f"owner is {asset.owner!r}")
    if state.grant(b.grant) is not None:
        raise RuleViolation(e.id, "body.grant", "grant-id-new", f"{b.grant!r} exists")
    if b.grantee != ev.ANYONE and state.party(b.grantee) is None:
        raise RuleViolation(e.id, "body.grantee", "grantee-registered", f"no party {b.grantee!r}")
    terms = b.terms.model_dump(exclude_none=True)
    grant = Grant(
        b.grant,
        b.asset,
        e.actor,
        b.grantee,
        frozenset(b.purposes),
        terms,
        b.valid_from,
        b.valid_until,
        seq,
    )
    return Effect(grant=grant)


def _consent_revoked(e: ev.ConsentRevoked, seq: int, recorded_at: str, state: State) -> Effect:
    grant = state.grant(e.body.grant)
    if grant is None:
        raise RuleViolation(e.id, "body.grant", "grant-exists", f"no grant {e.body.grant!r}")
    if grant.grantor != e.actor:
        raise RuleViolation(e.id, "body.grant", "revoked-by-grantor", f"grantor {grant.grantor!r}")
    # DESIGN.md asks for a live grant; one that has not started yet may be revoked too, so an
    # owner can cancel a grant scheduled for later. Revoked or expired grants are final.
    ended = grant.valid_until is not None and recorded_at >= grant.valid_until
    if grant.revoked_seq is not None or ended:
        raise RuleViolation(
            e.id, "body.grant", "grant-revocable", _why_not_live(grant, recorded_at)
        )
    return Effect(revoked=replace(grant, revoked_seq=seq))


def _why_not_live(grant: Grant, recorded_at: str) -> str:
    if grant.revoked_seq is not None:
        return f"grant {grant.grant!r} was revoked at seq {grant.revoked_seq}"
    if recorded_at < grant.valid_from:
        return f"grant {grant.grant!r} is valid from {grant.valid_from}"
    return f"grant {grant.grant!r} expired at {grant.valid_until}"


def _asset_derived(e: ev.AssetDerived, seq: int, recorded_at: str, state: State) -> Effect:
    b = e.body
    _new_asset(e, b.asset, state)
    total = sum(as_fraction(p.weight) for p in b.parents)
    edges = []
    for i, p in enumerate(b.parents):
        grant = _derivation_grant(e, i, p, recorded_at, state)
        share = grant.terms.get("share", "0")
        norm = as_fraction(p.weight) / total
        edges.append(Edge(b.asset, p.asset, p.weight, norm, p.grant, share, grant.terms, seq))
    asset = Asset(b.asset, b.kind, e.actor, seq, b.content_hash, b.uri, b.metadata, len(edges))
    return Effect(asset=asset, edges=edges)


def _derivation_grant(
    e: ev.AssetDerived, i: int, p: ev.Parent, recorded_at: str, state: State
) -> Grant:
    where = f"body.parents.{i}"
    if state.asset(p.asset) is None:
        raise RuleViolation(e.id, f"{where}.asset", "asset-registered", f"no asset {p.asset!r}")
    grant = state.grant(p.grant)
    if grant is None:
        raise RuleViolation(e.id, f"{where}.grant", "grant-exists", f"no grant {p.grant!r}")
    if grant.asset != p.asset:
        raise RuleViolation(
            e.id, f"{where}.grant", "grant-for-asset", f"grant is for {grant.asset!r}"
        )
    if grant.grantee not in (e.actor, ev.ANYONE):
        raise RuleViolation(
            e.id, f"{where}.grant", "grant-names-actor", f"grantee {grant.grantee!r}"
        )
    if e.body.purpose not in grant.purposes:
        raise RuleViolation(e.id, f"{where}.grant", "grant-covers-purpose", e.body.purpose)
    if not grant.live_at(recorded_at):
        raise RuleViolation(e.id, f"{where}.grant", "grant-live", _why_not_live(grant, recorded_at))
    return grant


UsageRow = tuple[int, str, str, str | None, int, int]
"""`seq, asset, actor, grant, units, revenue`: a use's row in the usage projection."""


def check_usage(e: ev.UsageRecorded, seq: int, recorded_at: str, state: State) -> UsageRow:
    """`check` for a usage event, returning its projection row."""
    _not_reserved(e)
    return _usage_row(e, seq, recorded_at, state)


def check_uses(
    actor: str,
    uses: Sequence[ev.UsageRecorded | ev.UsageEntry],
    bodies: Mapping[str, ev.UsageRecordedBody],
    first: int,
    recorded_at: str,
    state: State,
) -> list[UsageRow]:
    """`check_usage` of consecutive uses by `actor` numbered from `first`, with nothing between
    them that changes the state: the ingest hot path. A use is a model or a `UsageEntry`, whose
    body is `bodies[text]`. The rules are checked once per (asset, actor, grant) as
    `check_usage` would check them, and each use costs a lookup."""
    ids = [e[0] if isinstance(e, tuple) else e.id for e in uses]
    if any(i.startswith(ev.RESERVED_ID_PREFIX) for i in ids):  # refused, in log order
        return [check_usage(_use_model(actor, e, bodies), seq, recorded_at, state)
                for seq, e in enumerate(uses, first)]  # fmt: skip
    # the row of each distinct body text of the SDK's uses, less its seq (a batch repeats a few)
    known: dict[str, tuple[str, str, str | None, int, int]] = {}
    rows: list[UsageRow] = []
    append = rows.append
    seq = first
    for e in uses:
        if isinstance(e, tuple):
            rest = known.get(e[2])
            if rest is None:
                rest = known[e[2]] = _usage_row(_use_model(actor, e, bodies), seq,
                                                recorded_at, state)[1:]  # fmt: skip
            append((seq, *rest))
        else:  # a use given its own id or time: `_usage_row` resolves its grant once too
            append(_usage_row(e, seq, recorded_at, state))
        seq += 1
    return rows


def _use_model(
    actor: str, use: ev.UsageRecorded | ev.UsageEntry, bodies: Mapping[str, ev.UsageRecordedBody]
) -> ev.UsageRecorded:
    if isinstance(use, tuple):
        return ev.entry_event(actor, use, bodies[use[2]])
    return use


def _not_reserved(e: ev.Event) -> None:
    if e.id.startswith(ev.RESERVED_ID_PREFIX) and e.actor != ev.OPERATOR:
        raise RuleViolation(e.id, "id", "reserved-id", f"ids starting {ev.RESERVED_ID_PREFIX!r}")


def _usage_row(e: ev.UsageRecorded, seq: int, recorded_at: str, state: State) -> UsageRow:
    b = e.body
    key = (b.asset, e.actor, b.grant, recorded_at)
    grant_id = state.resolved.get(key, _UNRESOLVED)
    if grant_id is _UNRESOLVED:
        # resolved once per (asset, actor, grant) until an event changes the state: a party
        # registered, an asset or a grant added or revoked clears what was resolved
        _registered_actor(e, state)
        grant_id = _usage_grant(e, recorded_at, state)
        state.resolved[key] = grant_id
    return (seq, b.asset, e.actor, grant_id, b.units, b.revenue or 0)


_UNRESOLVED = "\0unresolved"


def _usage_grant(e: ev.UsageRecorded, recorded_at: str, state: State) -> str | None:
    """The grant a use falls under (None for the owner's own use), or a RuleViolation."""
    b = e.body
    asset = state.asset(b.asset)
    if asset is None:
        raise RuleViolation(e.id, "body.asset", "asset-registered", f"no asset {b.asset!r}")
    if asset.owner == e.actor:
        grant_id = b.grant
        if grant_id is not None:
            raise RuleViolation(
                e.id, "body.grant", "owner-uses-without-grant", "owner named a grant"
            )
    elif b.grant is not None:
        grant_id = _named_use_grant(e, b.grant, recorded_at, state).grant
    else:
        grant_id = _resolve_use_grant(e, recorded_at, state).grant
    return grant_id


def _named_use_grant(e: ev.UsageRecorded, grant_id: str, recorded_at: str, state: State) -> Grant:
    grant = state.grant(grant_id)
    if grant is None:
        raise RuleViolation(e.id, "body.grant", "grant-exists", f"no grant {grant_id!r}")
    if grant.asset != e.body.asset:
        raise RuleViolation(e.id, "body.grant", "grant-for-asset", f"grant is for {grant.asset!r}")
    if grant.grantee not in (e.actor, ev.ANYONE):
        raise RuleViolation(e.id, "body.grant", "grant-names-actor", f"grantee {grant.grantee!r}")
    if not grant.purposes & ev.USE_PURPOSES:
        raise RuleViolation(e.id, "body.grant", "grant-covers-purpose", "needs infer or generate")
    if not grant.live_at(recorded_at):
        raise RuleViolation(e.id, "body.grant", "grant-live", _why_not_live(grant, recorded_at))
    return grant


def _resolve_use_grant(e: ev.UsageRecorded, recorded_at: str, state: State) -> Grant:
    """A grant naming the actor before a '*' grant, the most recent first (DESIGN.md)."""
    candidates = [
        g
        for g in state.use_grants(e.body.asset, e.actor)
        if g.purposes & ev.USE_PURPOSES and g.live_at(recorded_at)
    ]
    if not candidates:
        raise RuleViolation(
            e.id,
            "body.grant",
            "live-use-grant",
            f"no live infer/generate grant on {e.body.asset!r} for {e.actor!r}",
        )
    return max(candidates, key=lambda g: (g.grantee != ev.ANYONE, g.seq))


def _settlement_closed(e: ev.SettlementClosed, seq: int, state: State) -> Effect:
    party = _registered_actor(e, state)
    if party.party != ev.OPERATOR or party.kind != "operator":
        raise RuleViolation(e.id, "actor", "operator-closes-settlement", f"actor {party.party!r}")
    expected = f"{ev.RESERVED_ID_PREFIX}settlement:run-{e.body.run}"
    if e.id != expected:  # one close per run: the id is unique in the log
        raise RuleViolation(e.id, "id", "one-close-per-run", f"expected {expected!r}")
    if e.body.cut >= seq:
        raise RuleViolation(e.id, "body.cut", "cut-in-log", f"cut {e.body.cut} is not before {seq}")
    return Effect()
