"""Guarantee 9 of issue 5: settlement is a pure function of the log (DESIGN.md, "Settlement").

One generated market, 100,000 usage events over a lineage six levels deep

    item (150 creators) -> dataset D1, D1b -> dataset D2 -> model M -> finetuned FT -> output O

with tiers, minimums (one owed without usage), revenue shares, per-unit prices, a grant to anyone,
a price change (a new grant, the old one revoked mid-stream) and owners' own revenue, is appended
as the same signed batches to SQLite and to PostgreSQL (a fixed clock, so `recorded_at` and the
tree agree) and settled on each. The statements must be byte-identical:

* on SQLite, on PostgreSQL, and in the exported log of each (`edvex log export`, identical
  files);
* recomputed from the exported JSONL file: loaded with `Ledger.restore` into a fresh database,
  every statement recomputed and signed again; and one statement checked end to end with
  `edvex verify STATEMENT --operator-key HEX --log FILE.jsonl`.

Both backends take 100,000 usage events by default (about a minute for the module). `tests/
test_settlement.py` covers the same property on the worked example.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from figures import FIGURES
from nacl.signing import SigningKey
from sqlalchemy import select

from cli.main import cli
from ledger import KeyPair, Ledger, SignedBatch
from ledger.audit import parse_export_line
from ledger.events import Event, parse_event, usage_event
from ledger.store import OPERATOR
from settlement import schema as settlement_schema
from settlement.run import compute_cycle, settle
from settlement.statements import sign, statement_bytes

USAGE_EVENTS = 100_000
BATCH = 5_000
CREATORS = 150
STAMP = "2026-11-01T00:00:00.000000Z"  # every occurred_at and valid_from
NOW = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)  # the ledgers' clock: recorded_at agrees


def fixed_clock() -> datetime:
    return NOW


def key_of(party: str) -> KeyPair:
    """The same key for a party on every run, so every signature is the same bytes."""
    return KeyPair(SigningKey(hashlib.sha256(f"edvex-determinism/{party}".encode()).digest()))


# --- the market -----------------------------------------------------------------------------------


class Script:
    """Signed batches, in log order, with fixed ids and timestamps."""

    def __init__(self) -> None:
        self.batches: list[SignedBatch] = []
        self.keys: dict[str, KeyPair] = {}
        self.usage = 0

    def key(self, party: str) -> KeyPair:
        return self.keys.setdefault(party, key_of(party))

    def send(self, actor: str, events: list[dict[str, Any]]) -> None:
        parsed = [parse_event({"actor": actor, "occurred_at": STAMP, **e}) for e in events]
        self.batches.append(SignedBatch.sign(actor, self.key(actor), parsed))

    def register(self, party: str, kind: str, *more: dict[str, Any]) -> None:
        body = {
            "party": party,
            "kind": kind,
            "public_key": self.key(party).public_hex,
            "name": party,
        }
        self.send(party, [{"id": f"reg-{party}", "type": "party.registered", "body": body}, *more])

    def use(self, actor: str, events: list[Event]) -> None:
        for start in range(0, len(events), BATCH):
            self.batches.append(
                SignedBatch.sign(actor, self.key(actor), events[start : start + BATCH])
            )
        self.usage += len(events)


def asset(asset_id: str, kind: str) -> dict[str, Any]:
    return {
        "id": f"a-{asset_id}",
        "type": "asset.registered",
        "body": {"asset": asset_id, "kind": kind},
    }


def grant(
    grant_id: str, asset_id: str, grantee: str, purposes: list[str], **terms: Any
) -> dict[str, Any]:
    return {
        "id": f"e-{grant_id}",
        "type": "consent.granted",
        "body": {
            "grant": grant_id,
            "asset": asset_id,
            "grantee": grantee,
            "purposes": purposes,
            "terms": terms,
            "valid_from": STAMP,
        },
    }


def derive(
    asset_id: str, kind: str, purpose: str, parents: list[tuple[str, Any, str]]
) -> dict[str, Any]:
    return {
        "id": f"d-{asset_id}",
        "type": "asset.derived",
        "body": {
            "asset": asset_id,
            "kind": kind,
            "purpose": purpose,
            "parents": [{"asset": a, "weight": w, "grant": g} for a, w, g in parents],
        },
    }


def usage(
    rng: random.Random,
    prefix: str,
    actor: str,
    asset_id: str,
    n: int,
    revenue: bool = False,
    grant_id: str | None = None,
) -> list[Event]:
    return [
        usage_event(
            f"{prefix}-{i}",
            actor,
            STAMP,
            asset_id,
            rng.randint(1, 50),
            rng.randint(1, 5_000_000) if revenue else None,
            grant_id,
        )
        for i in range(n)
    ]


def lineage(s: Script) -> None:
    """Parties, items, and the six levels: item -> D1/D1b -> D2 -> M -> FT -> O."""
    s.register(OPERATOR, "operator")
    for party, kind in (
        ("agg-1", "aggregator"),
        ("agg-2", "aggregator"),
        ("agg-3", "aggregator"),
        ("dev-1", "developer"),
        ("dev-2", "developer"),
        ("studio", "deployer"),
        *((f"shop-{i}", "deployer") for i in range(1, 6)),
    ):
        s.register(party, kind)
    d1, d1b, d2 = [], [], []
    for i in range(CREATORS):
        item, grants = f"item-{i:03d}", []
        weight = str(1 + (i * 37) % 1000)
        if i < 100:
            grants.append(grant(f"g-{item}-agg-1", item, "agg-1", ["derive"], share="0.5"))
            d1.append((item, weight, f"g-{item}-agg-1"))
        if i >= 50:
            grants.append(grant(f"g-{item}-agg-2", item, "agg-2", ["derive"], share="0.4"))
            d1b.append((item, weight, f"g-{item}-agg-2"))
        if i % 10 == 0:
            grants.append(grant(f"g-{item}-agg-3", item, "agg-3", ["derive", "train"], share="0.3"))
            d2.append((item, "0.5", f"g-{item}-agg-3"))
        s.register(f"cr-{i:03d}", "creator", asset(item, "data"), *grants)
    s.send(
        "agg-1",
        [
            derive("D1", "dataset", "derive", d1),
            grant("g-D1-agg-3", "D1", "agg-3", ["derive"], share="0.25"),
            grant("g-D1-dev-1", "D1", "dev-1", ["train"], share="0.05"),
        ],
    )
    s.send(
        "agg-2",
        [
            derive("D1b", "dataset", "derive", d1b),
            grant("g-D1b-agg-3", "D1b", "agg-3", ["derive"], share="0.2"),
        ],
    )
    parents = [("D1", 3, "g-D1-agg-3"), ("D1b", 2, "g-D1b-agg-3"), *d2]
    s.send(
        "agg-3",
        [
            derive("D2", "dataset", "derive", parents),
            grant("g-D2-dev-1", "D2", "dev-1", ["train"], share="0.15"),
        ],
    )
    s.send(
        "dev-1",
        [
            derive("M", "model", "train", [("D2", 4, "g-D2-dev-1"), ("D1", 1, "g-D1-dev-1")]),
            grant("g-M-dev-2", "M", "dev-2", ["finetune"], share="0.2"),
        ],
    )
    s.send(
        "dev-2",
        [
            derive("FT", "model", "finetune", [("M", 1, "g-M-dev-2")]),
            grant("g-FT-studio", "FT", "studio", ["derive"], share="0.3"),
            grant("g-FT-shop-2", "FT", "shop-2", ["infer"], per_unit="0.004"),
        ],
    )
    s.send(
        "studio",
        [
            derive("O", "output", "derive", [("FT", 1, "g-FT-studio")]),
            grant(
                "g-O-shop-1",
                "O",
                "shop-1",
                ["infer"],
                minimum="50.00",
                share="0.05",
                tiers=[
                    {"up_to": 10_000, "per_unit": "0.002"},
                    {"up_to": 50_000, "per_unit": "0.0015"},
                    {"up_to": None, "per_unit": "0.001"},
                ],
            ),
            grant("g-O-shop-2-v1", "O", "shop-2", ["generate"], per_unit="0.0025", share="0.1"),
            grant("g-O-shop-3", "O", "shop-3", ["infer"], per_unit="0.0001", minimum="500.00"),
            grant("g-O-anyone", "O", "*", ["infer"], per_unit="0.003"),
            grant("g-O-shop-5", "O", "shop-5", ["infer"], per_unit="0.01", minimum="75.00"),
        ],
    )


def market() -> Script:
    s = Script()
    lineage(s)
    rng = random.Random(7)
    s.use("shop-1", usage(rng, "s1", "shop-1", "O", 35_000, revenue=True))
    s.use("shop-2", usage(rng, "s2a", "shop-2", "O", 10_000, revenue=True))
    # the price changes: a new grant for shop-2, the old one revoked; later usage resolves anew
    s.send(
        "studio",
        [
            grant("g-O-shop-2-v2", "O", "shop-2", ["generate"], per_unit="0.003"),
            {"id": "r-O-shop-2-v1", "type": "consent.revoked", "body": {"grant": "g-O-shop-2-v1"}},
        ],
    )
    s.use("shop-2", usage(rng, "s2b", "shop-2", "O", 10_000, revenue=True))
    s.use("shop-2", usage(rng, "s2c", "shop-2", "FT", 5_000, grant_id="g-FT-shop-2"))
    s.use("shop-3", usage(rng, "s3", "shop-3", "O", 10_000))
    s.use("shop-4", usage(rng, "s4", "shop-4", "O", 15_000))
    s.use("studio", usage(rng, "own-O", "studio", "O", 10_000, revenue=True))
    s.use("dev-1", usage(rng, "own-M", "dev-1", "M", 5_000, revenue=True))
    assert s.usage == USAGE_EVENTS
    return s


@pytest.fixture(scope="module")
def script() -> Script:
    return market()


@pytest.fixture(scope="module")
def results() -> dict[str, Any]:
    """What each backend's leg produced, for the legs after it."""
    return {}


# --- one leg per backend --------------------------------------------------------------------------


@dataclass
class Settled:
    statements: dict[str, bytes]  # party -> the stored statement bytes
    export: bytes
    cut: int
    seconds: float


def settle_on(url: str, s: Script, export: Path) -> Settled:
    began = time.monotonic()
    led = Ledger.open(url, clock=fixed_clock)
    try:
        led.create("USD", f"edvex/{s.key(OPERATOR).public_hex[:16]}")
        for batch in s.batches:
            led.append(batch)
        result = settle(led, s.key(OPERATOR))
        assert result.run == 1 and result.statements > CREATORS
        st = settlement_schema.statements
        with led.engine.connect() as conn:
            rows = conn.execute(select(st.c.party, st.c.body).order_by(st.c.party)).all()
    finally:
        led.close()
    cli_ok(["--db", url, "log", "export", "-o", str(export)])
    return Settled(
        {r.party: r.body.encode() for r in rows},
        export.read_bytes(),
        result.cut,
        time.monotonic() - began,
    )


def cli_ok(argv: list[str]) -> str:
    result = CliRunner().invoke(cli, argv)
    assert result.exit_code == 0, f"edvex {' '.join(argv)}: {result.output}"
    return result.stdout


def recomputed_from_export(export: Path, db: Path, s: Script, cut: int) -> dict[str, bytes]:
    """The exported JSONL loaded into a fresh database, every statement computed and signed."""
    lines = export.read_text(encoding="utf-8").splitlines()
    records = [parse_export_line(text, n) for n, text in enumerate(lines[1:], start=2)]
    copy = Ledger.open(f"sqlite:///{db}")
    try:
        copy.restore([r for r in records if not isinstance(r, dict)], "USD")
        _, unsigned = compute_cycle(copy, 1, 0, cut)
    finally:
        copy.close()
    return {st["party"]: statement_bytes(sign(st, s.key(OPERATOR))) for st in unsigned}


def digest(statements: dict[str, bytes]) -> str:
    return hashlib.sha256(b"".join(statements[p] for p in sorted(statements))).hexdigest()[:16]


def check_lineage(statements: dict[str, bytes]) -> None:
    """Value reached the creators through all six levels, and the terms were all exercised."""
    docs = {p: json.loads(b) for p, b in statements.items()}
    creator = docs["cr-060"]  # in D1 and D1b, and directly in D2
    vias = {line["via"] for line in creator["lines"] if line["kind"] == "royalty_in"}
    assert vias == {"D1", "D1b", "D2"}, vias
    fees = {
        (line["counterparty"], line["via"])
        for line in docs["studio"]["lines"]
        if line["kind"] == "fee_in"
    }
    assert {
        ("shop-1", "O"),
        ("shop-2", "O"),
        ("shop-3", "O"),
        ("shop-4", "O"),
        ("shop-5", "O"),
    } <= fees
    assert docs["shop-5"]["totals"]["out"] == 75_000_000  # a minimum owed without usage
    assert sum(1 for p in docs if p.startswith("cr-")) == CREATORS


def test_same_log_settles_to_the_same_bytes_everywhere(
    db_url: str, script: Script, results: dict[str, Any], tmp_path: Path
) -> None:
    backend = "postgresql" if "postgresql" in db_url else "sqlite"
    leg = settle_on(db_url, script, tmp_path / "log.jsonl")
    check_lineage(leg.statements)
    size = json.loads(leg.export.splitlines()[0])["size"]
    if "reference" not in results:
        # the first leg to run (SQLite, normally) recomputes from its own export
        began = time.monotonic()
        again = recomputed_from_export(
            tmp_path / "log.jsonl", tmp_path / "copy.db", script, leg.cut
        )
        assert again == leg.statements
        one = tmp_path / "cr-060.json"
        one.write_bytes(leg.statements["cr-060"])
        out = cli_ok(
            [
                "--db",
                db_url,
                "--json",
                "verify",
                str(one),
                "--operator-key",
                script.key(OPERATOR).public_hex,
                "--log",
                str(tmp_path / "log.jsonl"),
            ]
        )
        assert json.loads(out)["recomputed"] is True
        results["reference"] = (backend, leg)
        FIGURES.append(
            f"determinism: {USAGE_EVENTS:,} usage events ({size:,} in the log), lineage of 6 "
            f"levels, {len(leg.statements)} statements (sha256 {digest(leg.statements)}): "
            f"recomputed from the JSONL export and `edvex verify --log` agree byte for byte "
            f"({time.monotonic() - began:.0f}s)"
        )
    else:
        first, reference = results["reference"]
        assert leg.export == reference.export, f"{backend} exports another log than {first}"
        assert leg.statements == reference.statements
    FIGURES.append(
        f"determinism on {backend}: {USAGE_EVENTS:,} usage events appended in batches of "
        f"{BATCH:,}, settled and exported in {leg.seconds:.0f}s; statements sha256 "
        f"{digest(leg.statements)}"
    )


def test_the_script_is_the_same_on_every_run() -> None:
    """The market comes from fixed seeds, ids and timestamps: two builds sign the same batches,
    so the statement digests in the figures can be compared across runs and machines."""
    a, b = Script(), Script()
    lineage(a)
    lineage(b)
    assert [x.digest for x in a.batches] == [y.digest for y in b.batches]
    assert [x.signature for x in a.batches] == [y.signature for y in b.batches]
