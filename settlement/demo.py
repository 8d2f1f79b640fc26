"""A realistic small market, built through the SDK, settled and verified: `edvex demo`.

Creators with items of varied weights grant two aggregators different terms; one creator revokes
its grant before the second dataset is built; two models are trained, one on both datasets; a
deployer uses that model under a tiered per-unit grant with a revenue share and a minimum, and a
developer reports the revenue of its own model. Everything is seeded, so every run settles to
the same figures.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ledger import Client, KeyPair, Ledger

from . import run as settlement_run
from .report import Equity, equity
from .verify import verify_run

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class DemoConfig:
    creators: int = 300
    deployer_events: int = 240_000
    owner_events: int = 40_000
    batch_size: int = 5_000
    seed: int = 7


@dataclass
class DemoResult:
    keys: dict[str, KeyPair]
    events: int = 0
    run: settlement_run.RunResult | None = None
    verified: int = 0
    equity: Equity | None = None
    by_kind: list[dict[str, Any]] = field(default_factory=list)


def _client(ledger: Ledger, keys: dict[str, KeyPair], party: str, **kw: Any) -> Client:
    return Client(ledger, party, keys[party], max_delay=0, **kw)


def build_market(ledger: Ledger, keys: dict[str, KeyPair], cfg: DemoConfig) -> None:
    """Parties, items, grants, datasets and models: the lineage that value will flow up."""
    rng = random.Random(cfg.seed)
    for party in ("agg-a", "agg-b", "dev-1", "dev-2", "deployer-1"):
        keys[party] = KeyPair.generate()
    kinds = {
        "agg-a": "aggregator",
        "agg-b": "aggregator",
        "dev-1": "developer",
        "dev-2": "developer",
        "deployer-1": "deployer",
    }
    for party, kind in kinds.items():
        with _client(ledger, keys, party) as c:
            c.register_party(kind)
    parents_a: list[tuple[str, int, str]] = []
    parents_b: list[tuple[str, int, str]] = []
    half = cfg.creators // 2
    for i in range(cfg.creators):
        name = f"creator-{i:04d}"
        keys[name] = KeyPair.generate()
        item, weight = f"item-{i:04d}", rng.randint(100, 20_000)  # tokens in the item
        with _client(ledger, keys, name) as c:
            c.register_party("creator")
            c.register_asset(item, "data", uri=f"https://example.org/items/{i}")
            if i < half + cfg.creators // 4:
                parents_a.append(
                    (
                        item,
                        weight,
                        c.grant_consent(
                            item, "agg-a", ["derive"], share="0.5", grant=f"g-{item}-a"
                        ),
                    )
                )
            if i >= half - cfg.creators // 4:
                parents_b.append(
                    (
                        item,
                        weight,
                        c.grant_consent(
                            item, "agg-b", ["derive"], share="0.35", grant=f"g-{item}-b"
                        ),
                    )
                )
    # One creator withdraws consent from agg-b before dataset B is built.
    item, _, grant = parents_b.pop()
    with _client(ledger, keys, f"creator-{item[5:]}") as c:
        c.revoke_consent(grant)
    with _client(ledger, keys, "agg-a") as c:
        c.derive("dataset-a", "dataset", "derive", parents_a)
        c.grant_consent("dataset-a", "dev-1", ["train"], share="0.1", grant="g-dataset-a-dev-1")
        c.grant_consent("dataset-a", "dev-2", ["train"], share="0.12", grant="g-dataset-a-dev-2")
    with _client(ledger, keys, "agg-b") as c:
        c.derive("dataset-b", "dataset", "derive", parents_b)
        c.grant_consent(
            "dataset-b", "dev-2", ["train", "finetune"], share="0.15", grant="g-dataset-b-dev-2"
        )
    with _client(ledger, keys, "dev-1") as c:
        c.derive("model-1", "model", "train", [("dataset-a", 1, "g-dataset-a-dev-1")])
    with _client(ledger, keys, "dev-2") as c:
        c.derive(
            "model-2",
            "model",
            "train",
            [("dataset-a", 3, "g-dataset-a-dev-2"), ("dataset-b", 2, "g-dataset-b-dev-2")],
        )
        c.grant_consent(
            "model-2",
            "deployer-1",
            ["infer", "generate"],
            share="0.05",
            tiers=[(100_000, "0.0004"), (1_000_000, "0.0003"), (None, "0.0002")],
            minimum="25.00",
            grant="g-model-2-deployer-1",
        )


def record_usage(
    ledger: Ledger, keys: dict[str, KeyPair], cfg: DemoConfig, progress: Progress | None
) -> int:
    """The deployer's metered use of model-2, and dev-1's own use of model-1 with revenue."""
    rng = random.Random(cfg.seed + 1)
    total = cfg.deployer_events + cfg.owner_events
    done = 0
    plan = (("deployer-1", "model-2", cfg.deployer_events), ("dev-1", "model-1", cfg.owner_events))
    for party, asset, count in plan:
        with _client(ledger, keys, party, batch_size=cfg.batch_size) as c:
            for n in range(count):
                cents = rng.randint(1, 500)
                c.record_usage(asset, rng.randint(1, 40), f"{cents // 100}.{cents % 100:02d}")
                if (n + 1) % cfg.batch_size == 0:
                    done += cfg.batch_size
                    if progress is not None:
                        progress("recording usage", done, total)
        done = sum(count for _, _, count in plan[: plan.index((party, asset, count)) + 1])
        if progress is not None:
            progress("recording usage", done, total)
    return total


def run_demo(
    ledger: Ledger, operator: KeyPair, cfg: DemoConfig, progress: Progress | None = None
) -> DemoResult:
    """Build, record, settle, verify every statement, report."""
    result = DemoResult(keys={})
    build_market(ledger, result.keys, cfg)
    result.events = record_usage(ledger, result.keys, cfg, progress)
    result.run = settlement_run.settle(ledger, operator)
    assert result.run.run is not None
    stored = [
        st
        for row in settlement_run.list_statements(ledger, run=result.run.run)
        if (st := settlement_run.get_statement(ledger, row["run"], row["party"])) is not None
    ]
    result.verified = verify_run(ledger, result.run.run, operator.public_hex, stored)
    result.equity = equity(ledger, result.run.run)
    return result
