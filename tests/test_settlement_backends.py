"""Property: the same random market, logged identically on SQLite and on PostgreSQL, settles to
identical statement bytes on both, and settling it again from a restored copy gives them again."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from helpers import PG_URL
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import create_engine, text

from ledger import KeyPair, Ledger, SignedBatch
from ledger.events import parse_event
from settlement import run as settlement_run
from settlement.run import compute_cycle, settle
from settlement.statements import unsigned_bytes

T0 = "2026-11-28T12:00:00.000000Z"
KEYS = {name: KeyPair.generate() for name in ("operator", "c0", "c1", "c2", "agg", "dev", "shop")}


def fixed_clock() -> datetime:
    return datetime(2026, 11, 28, 12, 0, 1, tzinfo=UTC)


@st.composite
def markets(draw: st.DrawFn) -> list[tuple[str, list[dict[str, Any]]]]:
    """Batches (actor, events) for creators -> dataset -> model -> deployer, random terms."""
    n = 0

    def ev(actor: str, type_: str, body: dict[str, Any]) -> dict[str, Any]:
        nonlocal n
        n += 1
        return {"id": f"e{n}", "type": type_, "actor": actor, "occurred_at": T0, "body": body}

    def party(name: str, kind: str) -> dict[str, Any]:
        body = {"party": name, "kind": kind, "public_key": KEYS[name].public_hex, "name": name}
        return ev(name, "party.registered", body)

    creators = draw(st.integers(1, 3))
    batches = [("operator", [party("operator", "operator")])]
    for name, kind in (("agg", "aggregator"), ("dev", "developer"), ("shop", "deployer")):
        batches.append((name, [party(name, kind)]))
    parents = []
    for i in range(creators):
        c = f"c{i}"
        share = draw(st.sampled_from(["0", "0.5", "0.3333333", "1"]))
        batches.append((c, [
            party(c, "creator"),
            ev(c, "asset.registered", {"asset": f"item{i}", "kind": "data"}),
            ev(c, "consent.granted", {"grant": f"g{i}", "asset": f"item{i}", "grantee": "agg",
                                      "purposes": ["derive"], "terms": {"share": share},
                                      "valid_from": T0}),
        ]))  # fmt: skip
        parents.append({"asset": f"item{i}", "weight": str(draw(st.integers(1, 999))),
                        "grant": f"g{i}"})  # fmt: skip
    last = draw(st.sampled_from(["0.005", "0.0000003"]))
    tiers = [{"up_to": draw(st.integers(1, 50)), "per_unit": "0.01"},
             {"up_to": None, "per_unit": last}]  # fmt: skip
    terms: dict[str, Any] = {"share": draw(st.sampled_from(["0", "0.05", "0.2"])), "tiers": tiers}
    if draw(st.booleans()):
        terms["minimum"] = draw(st.integers(0, 5_000_000))
    batches.append(("agg", [
        ev("agg", "asset.derived", {"asset": "D", "kind": "dataset", "purpose": "derive",
                                    "parents": parents}),
        ev("agg", "consent.granted", {"grant": "gD", "asset": "D", "grantee": "dev",
                                      "purposes": ["train"], "terms": {"share": "0.1"},
                                      "valid_from": T0}),
    ]))  # fmt: skip
    batches.append(("dev", [
        ev("dev", "asset.derived", {"asset": "M", "kind": "model", "purpose": "train",
                                    "parents": [{"asset": "D", "weight": "1", "grant": "gD"}]}),
        ev("dev", "consent.granted", {"grant": "gM", "asset": "M", "grantee": "shop",
                                      "purposes": ["infer"], "terms": terms, "valid_from": T0}),
    ]))  # fmt: skip
    uses = draw(st.lists(st.tuples(st.integers(0, 40), st.integers(0, 10**7)), max_size=8))
    shop = [ev("shop", "usage.recorded", {"asset": "M", "units": u, "revenue": r}) for u, r in uses]
    own = draw(st.lists(st.integers(0, 10**8), max_size=3))
    mine = [ev("dev", "usage.recorded", {"asset": "M", "units": 1, "revenue": r}) for r in own]
    for actor, events in (("shop", shop), ("dev", mine)):
        if events:
            batches.append((actor, events))
    return batches


@contextmanager
def pg_ledger() -> Iterator[Ledger]:
    schema = f"p_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    led = Ledger.open(f"{PG_URL}?options={quote(f'-csearch_path={schema}')}", clock=fixed_clock)
    try:
        yield led
    finally:
        led.close()
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


def settle_market(led: Ledger, batches: list[tuple[str, list[dict[str, Any]]]]) -> dict[str, bytes]:
    led.create("USD", "edvex/test")
    for actor, events in batches:
        led.append(SignedBatch.sign(actor, KEYS[actor], [parse_event(e) for e in events]))
    result = settle(led, KEYS["operator"])
    assert result.run == 1
    return {
        row["party"]: unsigned_bytes(settlement_run.get_statement(led, 1, row["party"]) or {})
        for row in settlement_run.list_statements(led, run=1)
    }


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(batches=markets())
def test_same_log_same_statements_on_both_backends(
    batches: list[tuple[str, list[dict[str, Any]]]], tmp_path: Path, pg_problem: str | None
) -> None:
    db = tmp_path / f"{uuid.uuid4().hex}.db"
    lite = Ledger.open(f"sqlite:///{db}", clock=fixed_clock)
    on_sqlite = settle_market(lite, batches)
    cut = lite.head().size - 1  # the close event follows the cut
    _, again = compute_cycle(lite, 1, 0, cut)
    assert {s["party"]: unsigned_bytes(s) for s in again} == on_sqlite
    lite.close()
    if pg_problem is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"PostgreSQL not reachable: {pg_problem}")
        pytest.skip(f"PostgreSQL not reachable ({pg_problem}); set EDVEX_TEST_PG")
    with pg_ledger() as pg:
        assert settle_market(pg, batches) == on_sqlite
