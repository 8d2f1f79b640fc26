"""`log verify` checks stored rows in a loop that writes the canonical bytes from a template; the
rows the template does not fit (ids or times that need escaping) go through the exact path."""

from __future__ import annotations

import hashlib

import pytest
from helpers import Market, drop_guards
from sqlalchemy import select, update

from ledger import IntegrityError, Ledger
from ledger import schema as s
from ledger.canonical import PLAIN_HEAD, recorded_at_member
from ledger.merkle import Frontier
from ledger.values import now_timestamp

IDS = ["plain-1", 'q"2', "back\\slash-3", "caf\u00e9-4", "plain-5"]


def market(ledger: Ledger) -> Market:
    m = Market(ledger)
    m.party("c1", "creator")
    m.party("dep", "deployer")
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c1", "grant_consent", "item-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    with m.client("dep") as c:  # one batch: the escaped ids sit inside it, not first
        for event_id in IDS:
            c.record_usage("item-1", 2, "0.5", id=event_id)
    return m


def test_ids_that_need_escaping_verify_like_the_rest(ledger: Ledger) -> None:
    market(ledger)
    report = ledger.verify()
    assert report.size == ledger.head().size
    stored = ledger.find_events(IDS)
    assert sorted(stored) == sorted(IDS)


def test_a_row_hashed_over_unescaped_bytes_is_refused(ledger: Ledger) -> None:
    """A forger with the actor's key and the database rewrites the event with id `q"2` so that
    its hash, leaf, batch signature and the head's tree all cover the template's bytes for it,
    which are not its canonical bytes (the quote is not escaped). Every other check passes;
    only the canonical encoding tells the difference, so verify must use it here."""
    m = market(ledger)
    ledger.verify()
    target = ledger.find_events(['q"2'])['q"2']
    body = target.body_text
    assert body is not None
    head = (PLAIN_HEAD % (target.actor, body, target.id, target.occurred_at)).encode()
    tail = b',"type":"usage.recorded"}'
    forged_hash = hashlib.sha256(head + tail).digest()
    member = recorded_at_member(target.recorded_at)
    forged_leaf = hashlib.sha256(b"\x00" + head + member + tail).digest()
    assert forged_hash != target.hash

    with ledger.engine.begin() as conn:
        drop_guards(conn)
        e, b = s.events.c, s.batches.c
        conn.execute(
            update(s.events).where(e.seq == target.seq).values(hash=forged_hash, leaf=forged_leaf)
        )
        batch = conn.execute(select(s.batches).where(b.batch == target.batch)).one()
        hashes = [
            bytes(h)
            for (h,) in conn.execute(select(e.hash).where(e.batch == target.batch).order_by(e.seq))
        ]
        digest = hashlib.sha256(b"".join(hashes)).digest()
        conn.execute(
            update(s.batches)
            .where(b.batch == batch.batch)
            .values(digest=digest, signature=m.keys["dep"].sign(digest))
        )
        leaves = [bytes(x) for (x,) in conn.execute(select(e.leaf).order_by(e.seq))]
        frontier = Frontier.empty()
        frontier.extend(leaves)
        conn.execute(update(s.log_head).values(frontier=frontier.to_bytes()))
        assert conn.execute(select(s.tree_nodes)).first() is None  # a log too small for nodes

    with pytest.raises(IntegrityError) as caught:
        ledger.verify()
    assert caught.value.seq == target.seq
    assert "event hash" in str(caught.value)


def test_rows_of_many_batches_and_a_rotated_key_verify(ledger: Ledger) -> None:
    """The loop hands the first row of each batch and every key event to the exact path."""
    m = market(ledger)
    with m.client("dep", batch_size=7) as c:
        for i in range(50):
            c.record_usage("item-1", 1, "0.01", id=f"u-{i}", occurred_at=now_timestamp())
    from ledger import KeyPair

    new_key = KeyPair.generate()
    with m.client("dep") as c:
        c.rotate_key(new_key)
    m.keys["dep"] = new_key
    with m.client("dep", batch_size=3) as c:
        for i in range(10):
            c.record_usage("item-1", 1, id=f"v-{i}")
    report = ledger.verify()
    assert report.size == ledger.head().size
    assert report.batches == ledger.head().batches
