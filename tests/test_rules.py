"""The rules of DESIGN.md's event table, as named cases, on SQLite and PostgreSQL.

Each rule case builds the state it needs through `Market`, then attempts one event that breaks
one rule. The attempt must raise a typed error whose message names the event id, the field and
the rule ("Bad input"), and must leave the log and its projections exactly as they were.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from helpers import Market, ts
from sqlalchemy import select

from ledger import (
    Client,
    InvalidEvent,
    KeyPair,
    Ledger,
    LedgerError,
    RuleViolation,
    SignatureInvalid,
    SignedBatch,
)
from ledger import schema as s
from ledger.events import Event, parse_event
from ledger.values import format_timestamp

BAD = "bad-event"  # the id of every attempted event

Attempt = Callable[[], object]
Setup = Callable[[Market], Attempt]


# --- helpers ------------------------------------------------------------------------------------


def snapshot(ledger: Ledger) -> dict[str, Any]:
    """The log's head and every projection table, ordered by primary key."""
    head = ledger.head()
    tables = {}
    with ledger.engine.connect() as conn:
        for table in s.PROJECTIONS:
            q = select(table).order_by(*table.primary_key.columns)
            tables[table.name] = [tuple(r) for r in conn.execute(q)]
    return {
        "size": head.size,
        "batches": head.batches,
        "root": head.root,
        "parties": ledger.parties(),
        "usage_count": ledger.usage_count(),
        "tables": tables,
    }


def event(type_: str, actor: str, body: dict[str, Any], id: str = BAD) -> Event:
    return parse_event({"id": id, "type": type_, "actor": actor, "occurred_at": ts(), "body": body})


def send(m: Market, actor: str, key: KeyPair, *events: Event) -> object:
    return m.ledger.append(SignedBatch.sign(actor, key, events))


def base(m: Market) -> None:
    """Two creators with one data item each, an aggregator and a deployer."""
    m.party("c1", "creator")
    m.party("c2", "creator")
    m.party("agg", "aggregator")
    m.party("dep", "deployer")
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c2", "register_asset", "item-2", "data")


def grant(m: Market, owner: str, asset: str, grantee: str, purposes: list[str], **kw: Any) -> str:
    return str(m.do(owner, "grant_consent", asset, grantee, purposes, share="0.5", **kw))


# --- parties and keys ---------------------------------------------------------------------------


def registration_signed_by_another_key(m: Market) -> Attempt:
    key, other = KeyPair.generate(), KeyPair.generate()
    body = {"party": "eve", "kind": "creator", "public_key": key.public_hex, "name": "Eve"}
    return lambda: send(m, "eve", other, event("party.registered", "eve", body))


def party_id_reused(m: Market) -> Attempt:
    m.party("c1")
    return lambda: m.do("c1", "register_party", "creator", id=BAD)


def party_id_reused_with_another_key(m: Market) -> Attempt:
    m.party("c1")
    key = KeyPair.generate()
    body = {"party": "c1", "kind": "creator", "public_key": key.public_hex, "name": "c1"}
    return lambda: send(m, "c1", key, event("party.registered", "c1", body))


def party_id_anyone(m: Market) -> Attempt:
    key = KeyPair.generate()
    body = {"party": "*", "kind": "creator", "public_key": key.public_hex, "name": "anyone"}
    return lambda: send(m, "*", key, event("party.registered", "*", body))


def registration_party_not_actor(m: Market) -> Attempt:
    key = KeyPair.generate()
    body = {"party": "mallory", "kind": "creator", "public_key": key.public_hex, "name": "M"}
    return lambda: send(m, "eve", key, event("party.registered", "eve", body))


def unregistered_actor(m: Market) -> Attempt:
    key = KeyPair.generate()
    body = {"asset": "ghost-item", "kind": "data"}
    return lambda: send(m, "ghost", key, event("asset.registered", "ghost", body))


def batch_signed_by_non_current_key(m: Market) -> Attempt:
    m.party("c1")
    other = KeyPair.generate()
    body = {"asset": "item-9", "kind": "data"}
    return lambda: send(m, "c1", other, event("asset.registered", "c1", body))


def rotated_out_key(m: Market) -> Attempt:
    m.party("c1")
    old, new = m.keys["c1"], KeyPair.generate()
    with m.client("c1") as c:
        c.rotate_key(new)
    m.keys["c1"] = new
    m.do("c1", "register_asset", "item-new-key", "data")  # the new key works
    stale = Client(m.ledger, "c1", old, max_delay=0)
    return lambda: _with_client(stale, "register_asset", "item-old-key", "data", id=BAD)


def _with_client(client: Client, method: str, *args: Any, **kwargs: Any) -> object:
    with client:
        return getattr(client, method)(*args, **kwargs)


def key_rotation_for_another_party(m: Market) -> Attempt:
    m.party("c1")
    m.party("c2")
    new = KeyPair.generate()
    body = {"party": "c1", "public_key": new.public_hex}
    return lambda: send(m, "c2", m.keys["c2"], event("party.key_rotated", "c2", body))


# --- assets and grants --------------------------------------------------------------------------


def asset_id_reused(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c1", "register_asset", "item-1", "data", id=BAD)


def asset_id_reused_by_another_party(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c2", "register_asset", "item-1", "data", id=BAD)


def grant_by_non_owner(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c2", "grant_consent", "item-1", "agg", ["derive"], share="1", id=BAD)


def grant_id_reused(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "agg", ["derive"], grant="g1")
    return lambda: m.do("c1", "grant_consent", "item-1", "dep", ["infer"], grant="g1", id=BAD)


def grant_id_reused_by_another_owner(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "agg", ["derive"], grant="g1")
    return lambda: m.do("c2", "grant_consent", "item-2", "dep", ["infer"], grant="g1", id=BAD)


def grant_on_unknown_asset(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c1", "grant_consent", "no-such-item", "agg", ["derive"], id=BAD)


def grant_to_unregistered_grantee(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c1", "grant_consent", "item-1", "nobody", ["derive"], id=BAD)


def revoke_by_non_grantor(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"])
    return lambda: m.do("agg", "revoke_consent", g, id=BAD)


def revoke_twice(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"])
    m.do("c1", "revoke_consent", g)
    return lambda: m.do("c1", "revoke_consent", g, id=BAD)


def revoke_expired_grant(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"], valid_from=ts(-2), valid_until=ts(-1))
    return lambda: m.do("c1", "revoke_consent", g, id=BAD)


def revoke_unknown_grant(m: Market) -> Attempt:
    base(m)
    return lambda: m.do("c1", "revoke_consent", "no-such-grant", id=BAD)


# --- derivations --------------------------------------------------------------------------------


def derive(m: Market, actor: str, child: str, parents: list[tuple[str, int, str]]) -> Attempt:
    return lambda: m.do(actor, "derive", child, "dataset", "derive", parents, id=BAD)


def derive_child_id_reused(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"])
    return derive(m, "agg", "item-2", [("item-1", 1, g)])


def derive_parent_grant_revoked(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"])
    m.do("c1", "revoke_consent", g)
    return derive(m, "agg", "D", [("item-1", 1, g)])


def derive_second_parent_grant_revoked(m: Market) -> Attempt:
    base(m)
    g1 = grant(m, "c1", "item-1", "agg", ["derive"])
    g2 = grant(m, "c2", "item-2", "agg", ["derive"])
    m.do("c2", "revoke_consent", g2)
    # given in reverse: parents are ordered by asset, so item-2 is parent 1
    return derive(m, "agg", "D", [("item-2", 1, g2), ("item-1", 1, g1)])


def derive_grant_revoked_earlier_in_batch(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "*", ["derive"])

    def attempt() -> None:
        with m.client("c1") as c:
            c.revoke_consent(g)
            c.derive("D", "dataset", "derive", [("item-1", 1, g)], id=BAD)

    return attempt


def derive_grant_names_another_party(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["derive"])
    return derive(m, "agg", "D", [("item-1", 1, g)])


def derive_grant_for_another_asset(m: Market) -> Attempt:
    base(m)
    m.do("c1", "register_asset", "item-1b", "data")
    g = grant(m, "c1", "item-1b", "agg", ["derive"])
    return derive(m, "agg", "D", [("item-1", 1, g)])


def derive_purpose_not_covered(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["infer"])
    return lambda: m.do("agg", "derive", "M", "model", "train", [("item-1", 1, g)], id=BAD)


def derive_grant_not_yet_valid(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"], valid_from=ts(1))
    return derive(m, "agg", "D", [("item-1", 1, g)])


def derive_grant_expired(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"], valid_from=ts(-2), valid_until=ts(-1))
    return derive(m, "agg", "D", [("item-1", 1, g)])


def derive_unknown_parent_asset(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"])
    return derive(m, "agg", "D", [("no-such-item", 1, g)])


def derive_unknown_grant(m: Market) -> Attempt:
    base(m)
    return derive(m, "agg", "D", [("item-1", 1, "no-such-grant")])


# --- usage --------------------------------------------------------------------------------------


def use(m: Market, actor: str = "dep", asset: str = "item-1", **kw: Any) -> Attempt:
    return lambda: m.do(actor, "record_usage", asset, 10, "1.00", id=BAD, **kw)


def usage_without_grant(m: Market) -> Attempt:
    base(m)
    return use(m)


def usage_after_revocation(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["infer"])
    m.do("dep", "record_usage", "item-1", 1)  # allowed while the grant is live
    m.do("c1", "revoke_consent", g)
    return use(m)


def usage_after_revocation_naming_grant(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["infer"])
    m.do("c1", "revoke_consent", g)
    return use(m, grant=g)


def usage_after_revocation_of_anyone_grant(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "*", ["generate"])
    m.do("c1", "revoke_consent", g)
    return use(m)


def usage_grant_only_covers_derive(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "dep", ["derive", "train", "finetune"])
    return use(m)


def usage_named_grant_only_covers_derive(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["derive"])
    return use(m, grant=g)


def usage_named_grant_for_another_asset(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c2", "item-2", "dep", ["infer"])
    return use(m, grant=g)


def usage_named_grant_naming_another_party(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["infer"])
    return use(m, grant=g)


def usage_only_grant_names_another_party(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "agg", ["infer"])
    return use(m)


def usage_before_validity(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "dep", ["infer"], valid_from=ts(1))
    return use(m)


def usage_named_before_validity(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["infer"], valid_from=ts(1))
    return use(m, grant=g)


def usage_after_expiry(m: Market) -> Attempt:
    base(m)
    grant(m, "c1", "item-1", "dep", ["infer"], valid_from=ts(-2), valid_until=ts(-1))
    return use(m)


def usage_named_after_expiry(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "dep", ["infer"], valid_from=ts(-2), valid_until=ts(-1))
    return use(m, grant=g)


def usage_named_unknown_grant(m: Market) -> Attempt:
    base(m)
    return use(m, grant="no-such-grant")


def usage_unknown_asset(m: Market) -> Attempt:
    base(m)
    return use(m, asset="no-such-item")


def usage_owner_names_grant(m: Market) -> Attempt:
    base(m)
    g = grant(m, "c1", "item-1", "*", ["infer"])
    return use(m, actor="c1", grant=g)


# --- settlement ---------------------------------------------------------------------------------


def settlement_closed_by_non_operator(m: Market) -> Attempt:
    base(m)
    root = "00" * 32
    return lambda: m.do("agg", "close_settlement", 1, 7, root, id=BAD)


RULE_CASES = [
    # party.registered / party.key_rotated, and the batch signer
    pytest.param(registration_signed_by_another_key, "body.public_key",
                 "self-certifying-registration", id="registration-signed-by-another-key"),
    pytest.param(party_id_reused, "body.party", "party-id-new", id="party-id-reused"),
    pytest.param(party_id_reused_with_another_key, "actor", "signed-by-current-key",
                 id="party-id-reused-with-another-key"),
    pytest.param(party_id_anyone, "body.party", "party-id-new", id="party-id-anyone"),
    pytest.param(registration_party_not_actor, "body.party", "self-certifying-registration",
                 id="registration-party-not-actor"),
    pytest.param(unregistered_actor, "actor", "actor-registered", id="unregistered-actor"),
    pytest.param(batch_signed_by_non_current_key, "actor", "signed-by-current-key",
                 id="batch-signed-by-non-current-key"),
    pytest.param(rotated_out_key, "actor", "signed-by-current-key", id="rotated-out-key"),
    pytest.param(key_rotation_for_another_party, "body.party", "signed-by-current-key",
                 id="key-rotation-for-another-party"),
    # asset.registered
    pytest.param(asset_id_reused, "body.asset", "asset-id-new", id="asset-id-reused"),
    pytest.param(asset_id_reused_by_another_party, "body.asset", "asset-id-new",
                 id="asset-id-reused-by-another-party"),
    # consent.granted
    pytest.param(grant_by_non_owner, "body.asset", "grantor-owns-asset", id="grant-by-non-owner"),
    pytest.param(grant_id_reused, "body.grant", "grant-id-new", id="grant-id-reused"),
    pytest.param(grant_id_reused_by_another_owner, "body.grant", "grant-id-new",
                 id="grant-id-reused-by-another-owner"),
    pytest.param(grant_on_unknown_asset, "body.asset", "asset-registered",
                 id="grant-on-unknown-asset"),
    pytest.param(grant_to_unregistered_grantee, "body.grantee", "grantee-registered",
                 id="grant-to-unregistered-grantee"),
    # consent.revoked
    pytest.param(revoke_by_non_grantor, "body.grant", "revoked-by-grantor",
                 id="revoke-by-non-grantor"),
    pytest.param(revoke_twice, "body.grant", "grant-revocable", id="revoke-twice"),
    pytest.param(revoke_expired_grant, "body.grant", "grant-revocable", id="revoke-expired-grant"),
    pytest.param(revoke_unknown_grant, "body.grant", "grant-exists", id="revoke-unknown-grant"),
    # asset.derived
    pytest.param(derive_child_id_reused, "body.asset", "asset-id-new",
                 id="derive-child-id-reused"),
    pytest.param(derive_parent_grant_revoked, "body.parents.0.grant", "grant-live",
                 id="derive-parent-grant-revoked"),
    pytest.param(derive_second_parent_grant_revoked, "body.parents.1.grant", "grant-live",
                 id="derive-second-parent-grant-revoked"),
    pytest.param(derive_grant_revoked_earlier_in_batch, "body.parents.0.grant", "grant-live",
                 id="derive-grant-revoked-earlier-in-batch"),
    pytest.param(derive_grant_names_another_party, "body.parents.0.grant", "grant-names-actor",
                 id="derive-grant-names-another-party"),
    pytest.param(derive_grant_for_another_asset, "body.parents.0.grant", "grant-for-asset",
                 id="derive-grant-for-another-asset"),
    pytest.param(derive_purpose_not_covered, "body.parents.0.grant", "grant-covers-purpose",
                 id="derive-purpose-not-covered"),
    pytest.param(derive_grant_not_yet_valid, "body.parents.0.grant", "grant-live",
                 id="derive-grant-not-yet-valid"),
    pytest.param(derive_grant_expired, "body.parents.0.grant", "grant-live",
                 id="derive-grant-expired"),
    pytest.param(derive_unknown_parent_asset, "body.parents.0.asset", "asset-registered",
                 id="derive-unknown-parent-asset"),
    pytest.param(derive_unknown_grant, "body.parents.0.grant", "grant-exists",
                 id="derive-unknown-grant"),
    # usage.recorded
    pytest.param(usage_without_grant, "body.grant", "live-use-grant",
                 id="usage-non-owner-without-grant"),
    pytest.param(usage_after_revocation, "body.grant", "live-use-grant",
                 id="usage-after-revocation"),
    pytest.param(usage_after_revocation_naming_grant, "body.grant", "grant-live",
                 id="usage-after-revocation-naming-grant"),
    pytest.param(usage_after_revocation_of_anyone_grant, "body.grant", "live-use-grant",
                 id="usage-after-revocation-of-anyone-grant"),
    pytest.param(usage_grant_only_covers_derive, "body.grant", "live-use-grant",
                 id="usage-grant-only-covers-derive"),
    pytest.param(usage_named_grant_only_covers_derive, "body.grant", "grant-covers-purpose",
                 id="usage-named-grant-only-covers-derive"),
    pytest.param(usage_named_grant_for_another_asset, "body.grant", "grant-for-asset",
                 id="usage-named-grant-for-another-asset"),
    pytest.param(usage_named_grant_naming_another_party, "body.grant", "grant-names-actor",
                 id="usage-named-grant-naming-another-party"),
    pytest.param(usage_only_grant_names_another_party, "body.grant", "live-use-grant",
                 id="usage-only-grant-names-another-party"),
    pytest.param(usage_before_validity, "body.grant", "live-use-grant",
                 id="usage-before-validity"),
    pytest.param(usage_named_before_validity, "body.grant", "grant-live",
                 id="usage-named-grant-before-validity"),
    pytest.param(usage_after_expiry, "body.grant", "live-use-grant", id="usage-after-expiry"),
    pytest.param(usage_named_after_expiry, "body.grant", "grant-live",
                 id="usage-named-grant-after-expiry"),
    pytest.param(usage_named_unknown_grant, "body.grant", "grant-exists",
                 id="usage-named-unknown-grant"),
    pytest.param(usage_unknown_asset, "body.asset", "asset-registered", id="usage-unknown-asset"),
    pytest.param(usage_owner_names_grant, "body.grant", "owner-uses-without-grant",
                 id="usage-owner-names-grant"),
    # settlement.closed
    pytest.param(settlement_closed_by_non_operator, "actor", "operator-closes-settlement",
                 id="settlement-closed-by-non-operator"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "field", "rule"), RULE_CASES)
def test_rule_violation_is_refused_and_changes_nothing(
    ledger: Ledger, setup: Setup, field: str, rule: str
) -> None:
    m = Market(ledger)
    attempt = setup(m)
    before = snapshot(ledger)
    with pytest.raises(RuleViolation) as caught:
        attempt()
    err = caught.value
    assert (err.event_id, err.field, err.rule) == (BAD, field, rule)
    message = str(err)
    assert f"event {BAD!r}" in message
    assert f"field {field!r}" in message
    assert f"rule {rule!r}" in message
    assert snapshot(ledger) == before


# --- refusals of a batch as a whole -------------------------------------------------------------


def batch_of_two_actors(m: Market) -> Attempt:
    base(m)
    ok = event("asset.registered", "c1", {"asset": "item-9", "kind": "data"}, id="ok")
    bad = event("asset.registered", "c2", {"asset": "item-10", "kind": "data"})
    return lambda: send(m, "c1", m.keys["c1"], ok, bad)


def batch_repeating_an_id(m: Market) -> Attempt:
    base(m)
    first = event("asset.registered", "c1", {"asset": "item-9", "kind": "data"})
    again = event("asset.registered", "c1", {"asset": "item-10", "kind": "data"})
    return lambda: send(m, "c1", m.keys["c1"], first, again)


def empty_batch(m: Market) -> Attempt:
    base(m)
    return lambda: send(m, "c1", m.keys["c1"])


def batch_changed_after_signing(m: Market) -> Attempt:
    base(m)
    signed = event("asset.registered", "c1", {"asset": "item-9", "kind": "data"})
    changed = event("asset.registered", "c1", {"asset": "item-10", "kind": "data"})
    batch = SignedBatch.sign("c1", m.keys["c1"], [signed])
    forged = SignedBatch("c1", batch.key, (changed,), batch.signature)
    return lambda: m.ledger.append(forged)


def batch_claiming_the_actors_key(m: Market) -> Attempt:
    base(m)
    e = event("asset.registered", "c1", {"asset": "item-9", "kind": "data"})
    mallory = SignedBatch.sign("c1", KeyPair.generate(), [e])
    forged = SignedBatch("c1", m.keys["c1"].public_hex, (e,), mallory.signature)
    return lambda: m.ledger.append(forged)


BATCH_CASES = [
    pytest.param(batch_of_two_actors, InvalidEvent, "actor", id="batch-of-two-actors"),
    pytest.param(batch_repeating_an_id, InvalidEvent, "id", id="batch-repeating-an-id"),
    pytest.param(empty_batch, InvalidEvent, "events", id="empty-batch"),
    pytest.param(batch_changed_after_signing, SignatureInvalid, None,
                 id="batch-changed-after-signing"),
    pytest.param(batch_claiming_the_actors_key, SignatureInvalid, None,
                 id="batch-claiming-the-actors-key"),
]  # fmt: skip


@pytest.mark.parametrize(("setup", "error", "field"), BATCH_CASES)
def test_bad_batch_is_refused_and_changes_nothing(
    ledger: Ledger, setup: Setup, error: type[LedgerError], field: str | None
) -> None:
    m = Market(ledger)
    attempt = setup(m)
    before = snapshot(ledger)
    with pytest.raises(error) as caught:
        attempt()
    if field is not None:
        assert isinstance(caught.value, InvalidEvent)
        assert caught.value.field == field
        assert f"field {field!r}" in str(caught.value)
    assert snapshot(ledger) == before


# --- what the rules allow -----------------------------------------------------------------------


def usage_rows(ledger: Ledger) -> dict[str, tuple[str | None, int, int]]:
    """Usage projection rows by event id: (resolved grant, units, revenue micros)."""
    u, e = s.usage.c, s.events.c
    q = select(e.id, u.grant, u.units, u.revenue).join_from(s.usage, s.events, u.seq == e.seq)
    with ledger.engine.connect() as conn:
        return {r.id: (r.grant, r.units, r.revenue) for r in conn.execute(q)}


def test_reserved_ids_are_the_operators(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    size = ledger.head().size
    with pytest.raises(RuleViolation) as caught:
        m.do("c1", "register_asset", "x", "data", id="edvex:settlement:run-1")
    assert (caught.value.field, caught.value.rule) == ("id", "reserved-id")
    assert "event 'edvex:settlement:run-1'" in str(caught.value)
    assert ledger.head().size == size


def test_a_grant_not_yet_valid_can_be_revoked(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    g = grant(m, "c1", "item-1", "agg", ["derive"], valid_from=ts(1))
    m.do("c1", "revoke_consent", g)
    assert ledger.grants_on("item-1")[-1].revoked_seq == ledger.head().size


def test_owner_uses_own_asset_without_grant(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    eid = m.do("c1", "record_usage", "item-1", 12, "3.5")
    assert usage_rows(ledger)[eid] == (None, 12, 3_500_000)


def test_derivation_allowed_under_live_grants(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    g1 = grant(m, "c1", "item-1", "agg", ["train", "derive"])
    g2 = grant(m, "c2", "item-2", "*", ["train"])
    m.do("agg", "derive", "M", "model", "train", [("item-1", 3, g1), ("item-2", 1, g2)])
    assert m.ledger.asset("M") is not None
    edges = m.ledger.parents_of(["M"])["M"]
    assert [(e.parent, e.grant, str(e.norm)) for e in edges] == [
        ("item-1", g1, "3/4"),
        ("item-2", g2, "1/4"),
    ]


def test_grant_and_derive_in_one_batch(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    with m.client("c1") as c:
        g = c.grant_consent("item-1", "*", ["derive"], share="0.5")
        c.derive("D", "dataset", "derive", [("item-1", 1, g)])
    assert ledger.asset("D") is not None
    assert ledger.asset("D")["owner"] == "c1"


def test_usage_resolves_grant_naming_actor_first_then_most_recent(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    grant(m, "c1", "item-1", "*", ["infer"], grant="any-old")
    grant(m, "c1", "item-1", "dep", ["generate"], grant="dep-old")
    grant(m, "c1", "item-1", "*", ["infer"], grant="any-new")
    # grants that never resolve for dep: another grantee, no use purpose, not live yet or any more
    grant(m, "c1", "item-1", "agg", ["infer"], grant="agg-only")
    grant(m, "c1", "item-1", "dep", ["derive"], grant="dep-derive")
    grant(m, "c1", "item-1", "dep", ["infer"], grant="dep-future", valid_from=ts(1))
    grant(m, "c1", "item-1", "dep", ["infer"], grant="dep-past", valid_from=ts(-2),
          valid_until=ts(-1))  # fmt: skip

    def usage(actor: str = "dep") -> str:
        return str(m.do(actor, "record_usage", "item-1", 1))

    expected = {usage(): "dep-old"}  # a grant naming the actor before any '*' grant
    grant(m, "c1", "item-1", "dep", ["infer"], grant="dep-new")
    expected[usage()] = "dep-new"  # the most recent of those naming the actor
    m.do("c1", "revoke_consent", "dep-new")
    expected[usage()] = "dep-old"
    m.do("c1", "revoke_consent", "dep-old")
    expected[usage()] = "any-new"  # then the most recent '*' grant
    m.do("c1", "revoke_consent", "any-new")
    expected[usage()] = "any-old"
    expected[usage("agg")] = "agg-only"
    expected[usage("c2")] = "any-old"
    rows = usage_rows(ledger)
    assert {eid: rows[eid][0] for eid in expected} == expected


def test_usage_naming_a_live_grant_keeps_it(ledger: Ledger) -> None:
    m = Market(ledger)
    base(m)
    grant(m, "c1", "item-1", "dep", ["infer"], grant="dep-new")
    grant(m, "c1", "item-1", "*", ["generate"], grant="any")
    eid = m.do("dep", "record_usage", "item-1", 5, "0.25", grant="any")
    assert usage_rows(ledger)[eid] == ("any", 5, 250_000)


def test_only_the_operator_closes_settlement(ledger: Ledger) -> None:
    """DESIGN.md: settlement.closed is "appended by the operator"; declaring oneself of kind
    'operator' must not be enough (refusing that registration or the close both do)."""
    m = Market(ledger)
    attempts: list[Attempt] = [
        lambda: m.party("mallory", "operator"),
        lambda: m.do("mallory", "close_settlement", 1, ledger.head().size, "00" * 32, id=BAD),
    ]
    refused = None
    for attempt in attempts:
        try:
            attempt()
        except RuleViolation as e:
            refused = e
            break
    assert refused is not None, "a self-declared operator closed a settlement cycle"
    assert not list(ledger.events_of(["settlement.closed"], ledger.head().size))


class Clock:
    """A ledger clock that tests set by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def test_grant_is_live_within_valid_from_inclusive_to_valid_until_exclusive(
    ledger: Ledger,
) -> None:
    start = datetime.now(UTC) + timedelta(days=10)
    end = start + timedelta(days=1)
    tick = timedelta(microseconds=1)
    clock = Clock(datetime.now(UTC))
    m = Market(Ledger(ledger.engine, clock=clock))
    base(m)
    grant(m, "c1", "item-1", "dep", ["infer"], grant="g", valid_from=format_timestamp(start),
          valid_until=format_timestamp(end))  # fmt: skip
    outcomes = []
    for moment in (start - tick, start, end - tick, end):
        clock.now = moment
        try:
            m.do("dep", "record_usage", "item-1", 1, id=f"at-{format_timestamp(moment)}")
            outcomes.append("used")
        except RuleViolation as e:
            outcomes.append(e.rule)
    assert outcomes == ["live-use-grant", "used", "used", "live-use-grant"]


# --- the model: refusals before any rule is checked ---------------------------------------------

NOW = "2026-11-28T17:23:05.123456Z"
VALID: dict[str, dict[str, Any]] = {
    "usage": {
        "id": "e-usage", "type": "usage.recorded", "actor": "dep", "occurred_at": NOW,
        "body": {"asset": "M", "units": 3, "revenue": "1.25"},
    },
    "grant": {
        "id": "e-grant", "type": "consent.granted", "actor": "c1", "occurred_at": NOW,
        "body": {"grant": "g1", "asset": "item-1", "grantee": "dep", "purposes": ["infer"],
                 "terms": {"share": "0.1", "minimum": "5"}, "valid_from": NOW},
    },
    "derive": {
        "id": "e-derive", "type": "asset.derived", "actor": "agg", "occurred_at": NOW,
        "body": {"asset": "D", "kind": "dataset", "purpose": "derive",
                 "parents": [{"asset": "item-1", "weight": "3", "grant": "g1"},
                             {"asset": "item-2", "weight": 1, "grant": "g2"}]},
    },
}  # fmt: skip


def changed(kind: str, path: str, value: Any) -> dict[str, Any]:
    """VALID[kind] with the value at dotted `path` set to `value`."""
    data = copy.deepcopy(VALID[kind])
    *parents, last = path.split(".")
    node: Any = data
    for key in parents:
        node = node[int(key)] if isinstance(node, list) else node[key]
    if isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    return data


TIERS_OPEN = [{"up_to": 100, "per_unit": "0.01"}, {"up_to": None, "per_unit": "0.005"}]
TIERS_CLOSED = [{"up_to": 100, "per_unit": "0.01"}, {"up_to": 200, "per_unit": "0.005"}]
SAME_PARENT = [{"asset": "item-1", "weight": "1", "grant": "g1"},
               {"asset": "item-1", "weight": "2", "grant": "g2"}]  # fmt: skip

MODEL_CASES = [
    pytest.param("usage", "body.revenue", 1.25, "body.revenue", "revenue", id="float-amount"),
    pytest.param("grant", "body.terms.minimum", 5.0, "body.terms.minimum", "minimum",
                 id="float-minimum"),
    pytest.param("grant", "body.terms.share", 0.1, "body.terms.share", "share", id="float-share"),
    pytest.param("derive", "body.parents.1.weight", 1.0, "body.parents.1.weight", "weight",
                 id="float-weight"),
    pytest.param("usage", "body.revenue", "0.0000001", "body.revenue", "6 decimals",
                 id="amount-with-7-decimals"),
    pytest.param("usage", "body.revenue", "-1.00", "body.revenue", "revenue",
                 id="negative-amount"),
    pytest.param("usage", "body.revenue", "1e3", "body.revenue", "revenue",
                 id="amount-with-exponent"),
    pytest.param("usage", "body.units", -1, "body.units", "units", id="negative-units"),
    pytest.param("usage", "body.units", 1.0, "body.units", "units", id="float-units"),
    pytest.param("usage", "id", "x" * 129, "id", "128", id="id-of-129-chars"),
    pytest.param("usage", "id", "", "id", "id", id="empty-id"),
    pytest.param("usage", "actor", "a" * 129, "actor", "128", id="actor-of-129-chars"),
    pytest.param("usage", "type", "usage.deleted", "type", "unknown event type",
                 id="unknown-event-type"),
    pytest.param("usage", "occurred_at", "2026-11-28T17:23:05", "occurred_at", "time zone",
                 id="timestamp-without-zone"),
    pytest.param("usage", "body.extra", 1, "body.extra", "extra", id="unknown-field"),
    pytest.param("derive", "body.parents.0.weight", "0", "body.parents.0", "weight",
                 id="zero-weight"),
    pytest.param("derive", "body.parents", SAME_PARENT, "body", "parents",
                 id="duplicate-parents"),
    pytest.param("derive", "body.parents", [], "body", "parents", id="no-parents"),
    pytest.param("derive", "body.purpose", "infer", "body.purpose", "purpose",
                 id="derive-for-a-use-purpose"),
    pytest.param("grant", "body.grantee", "*", "body", "minimum", id="minimum-on-anyone-grant"),
    pytest.param("grant", "body.terms.tiers", TIERS_CLOSED, "body.terms", "last tier",
                 id="tiers-without-open-final-tier"),
    pytest.param("grant", "body.terms.per_unit", "0.02", "body.terms", "per_unit",
                 id="per-unit-with-tiers"),
    pytest.param("grant", "body.terms.share", "1.01", "body.terms", "share",
                 id="share-above-one"),
    pytest.param("grant", "body.purposes", ["infer", "sell"], "body.purposes.1", "purposes",
                 id="unknown-purpose"),
    pytest.param("grant", "body.valid_until", "2026-11-27T00:00:00Z", "body", "valid_until",
                 id="valid-until-before-valid-from"),
]  # fmt: skip


def test_valid_model_cases_parse() -> None:
    for data in VALID.values():
        parse_event(data)
    with_tiers = changed("grant", "body.terms.tiers", TIERS_OPEN)
    assert parse_event(with_tiers).body.terms.tiers is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(("kind", "path", "value", "field", "names"), MODEL_CASES)
def test_model_refuses_bad_input(kind: str, path: str, value: Any, field: str, names: str) -> None:
    data = changed(kind, path, value)
    if path == "body.terms.per_unit":
        data["body"]["terms"]["tiers"] = TIERS_OPEN
    with pytest.raises(InvalidEvent) as caught:
        parse_event(data)
    err = caught.value
    assert err.event_id == data["id"]
    assert err.field == field
    message = str(err)
    assert f"event {data['id']!r}" in message
    assert f"field {field!r}" in message
    assert names in message
