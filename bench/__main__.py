"""EDVEX benchmarks: `python -m bench [--db URL] [--events N] [--creators C] [--depth D]`.

Each figure is printed beside its floor, measured in the same run on the same machine:
ingest through `ledger.Client` beside the raw driver inserting rows of the same width; one
settlement cycle beside a bare GROUP BY over the same usage table; `log verify` and statement
signing. `--scaling` repeats ingest and settlement over growing sizes. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sqlite3
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ledger import Client, KeyPair, Ledger
from ledger.store import normalise_url
from settlement import statements
from settlement.run import settle

Row = dict[str, Any]
SCHEMAS: list[str] = []  # PostgreSQL schemas made by this run, dropped at its end


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def fresh_db(url: str | None, tmp: Path, name: str) -> str:
    """A new empty database: a SQLite file, or a new schema in the PostgreSQL database."""
    if url is None or url.startswith("sqlite"):
        return f"sqlite:///{tmp / (name + '.db')}"
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
    SCHEMAS.append(schema)
    led = Ledger.open(url)
    with led.engine.begin() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    led.close()
    sep = "&" if "?" in url else "?"
    return f"{url}{sep}options=-csearch_path%3D{schema}"


def build_lineage(led: Ledger, keys: dict[str, KeyPair], creators: int, depth: int) -> str:
    """C creators' items -> one dataset -> a chain of derived models, `depth` levels in all."""
    for party, kind in (("agg", "aggregator"), ("dev", "developer"), ("shop", "deployer")):
        keys[party] = KeyPair.generate()
        with Client(led, party, keys[party], max_delay=0) as c:
            c.register_party(kind)
    parents = []
    per_party = 1000  # one creator party holds many items: registration is not what we measure
    for start in range(0, creators, per_party):
        name = f"creator-{start}"
        keys[name] = KeyPair.generate()
        with Client(led, name, keys[name], max_delay=0, batch_size=5000) as c:
            c.register_party("creator")
            for i in range(start, min(creators, start + per_party)):
                c.register_asset(f"item-{i}", "data")
                c.grant_consent(f"item-{i}", "agg", ["derive"], share="0.4", grant=f"g-{i}")
                parents.append((f"item-{i}", 1 + i % 17, f"g-{i}"))
    with Client(led, "agg", keys["agg"], max_delay=0) as c:
        c.derive("level-1", "dataset", "derive", parents)
        c.grant_consent("level-1", "dev", ["train", "derive"], share="0.1", grant="g-level-1")
    top = "level-1"
    with Client(led, "dev", keys["dev"], max_delay=0) as c:
        for level in range(2, depth + 1):
            child = f"level-{level}"
            c.derive(child, "model", "train", [(top, 1, f"g-{top}")])
            c.grant_consent(child, "dev", ["train", "derive"], grant=f"g-{child}", share="0.2")
            top = child
        c.grant_consent(top, "shop", ["infer"], share="0.05", grant="g-shop",
                        tiers=[(100_000, "0.0004"), (None, "0.0002")], minimum="10")  # fmt: skip
    return top


def ingest(led: Ledger, key: KeyPair, asset: str, n: int) -> float:
    def run() -> None:
        with Client(led, "shop", key, max_delay=0, batch_size=5000) as c:
            for i in range(n):
                c.record_usage(asset, 1 + i % 40, "0.01")

    seconds, _ = timed(run)
    return seconds


def floor_insert(url: str, n: int, tmp: Path) -> float:
    """The raw driver inserting rows as wide as an event row with a unique random id."""
    rows = [(i + 1, str(uuid.uuid4()), "usage.recorded", "shop", "2026-11-28T17:23:05.123456Z",
             "2026-11-28T17:23:05.123456Z", '{"asset":"model","units":3,"revenue":10000}',
             os.urandom(32), os.urandom(32), 1) for i in range(n)]  # fmt: skip
    ddl = ("CREATE TABLE floor (seq BIGINT PRIMARY KEY, id VARCHAR(128) UNIQUE, type VARCHAR(32), "
           "actor VARCHAR(128), occurred_at VARCHAR(27), recorded_at VARCHAR(27), body TEXT, "
           "hash {b}, leaf {b}, batch BIGINT)")  # fmt: skip
    if url.startswith("sqlite"):
        conn = sqlite3.connect(tmp / "floor.db")
        conn.execute(ddl.format(b="BLOB"))
        seconds, _ = timed(lambda: (conn.executemany(
            "INSERT INTO floor VALUES (?,?,?,?,?,?,?,?,?,?)", rows), conn.commit()))  # fmt: skip
        conn.close()
        return seconds
    import psycopg

    raw_url = normalise_url(url).replace("postgresql+psycopg", "postgresql")
    with psycopg.connect(raw_url) as conn:
        conn.execute(ddl.format(b="BYTEA"))

        def copy() -> None:
            with conn.cursor() as cur, cur.copy("COPY floor FROM STDIN") as cp:
                for row in rows:
                    cp.write_row(row)
            conn.commit()

        seconds, _ = timed(copy)
    return seconds


def bare_group_by(led: Ledger) -> float:
    q = text("SELECT asset, SUM(units), SUM(revenue) FROM usage GROUP BY asset")
    with led.engine.connect() as conn:
        seconds, _ = timed(lambda: conn.execute(q).all())
    return seconds


def signing_rate(n: int = 2000) -> tuple[float, float]:
    key = KeyPair.generate()
    st = statements.build(run=1, party="p", currency="USD", from_seq=1, to_seq=10, root=b"\0" * 32,
                          lines=[{"kind": "retained", "asset": "a", "counterparty": "p",
                                  "via": "a", "amount": 5}])  # fmt: skip
    sign_s, signed = timed(lambda: [statements.sign(st, key) for _ in range(n)])
    verify_s, _ = timed(lambda: [statements.check_signature(s, key.public_hex) for s in signed])
    return n / sign_s, n / verify_s


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_run(url: str | None, events: int, creators: int, depth: int, tmp: Path) -> Row:
    db = fresh_db(url, tmp, f"n{events}_c{creators}_d{depth}")
    led = Ledger.open(db)
    operator = KeyPair.generate()
    led.initialise(operator)
    keys: dict[str, KeyPair] = {}
    top = build_lineage(led, keys, creators, depth)
    ingest_s = ingest(led, keys["shop"], top, events)
    floor_s = floor_insert(db, events, tmp)
    group_s = bare_group_by(led)
    settle_s, result = timed(lambda: settle(led, operator))
    size = led.head().size
    verify_s, _ = timed(led.verify)
    led.close()
    return {
        "backend": "postgresql" if db.startswith("postgres") else "sqlite",
        "events": events, "creators": creators, "depth": depth,
        "ingest_per_s": round(events / ingest_s), "floor_per_s": round(events / floor_s),
        "ingest_vs_floor": round(floor_s / ingest_s, 3),
        "settle_s": round(settle_s, 3), "group_by_s": round(group_s, 4),
        "settle_vs_group_by": round(settle_s / group_s, 1) if group_s else None,
        "statements": result.statements, "verify_per_s": round(size / verify_s),
        "peak_rss_mib": round(peak_rss_mib(), 1),
    }  # fmt: skip


COLUMNS = ["backend", "events", "creators", "depth", "ingest_per_s", "floor_per_s",
           "ingest_vs_floor", "settle_s", "group_by_s", "settle_vs_group_by", "statements",
           "verify_per_s", "peak_rss_mib"]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c)).rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--db", default=None, help="PostgreSQL URL (default: SQLite files in a temp dir)"
    )
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--creators", type=int, default=1_000)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--scaling", action="store_true", help="grow events, creators and depth")
    p.add_argument("--huge", action="store_true", help="with --scaling: include 10M events")
    p.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = p.parse_args()
    with tempfile.TemporaryDirectory(prefix="edvex-bench-") as tmpdir:
        tmp = Path(tmpdir)
        plan = [(args.events, args.creators, args.depth)]
        if args.scaling:
            sizes = [100_000, 1_000_000] + ([10_000_000] if args.huge else [])
            plan = [(n, args.creators, args.depth) for n in sizes]
            plan += [(args.events, c, args.depth) for c in (1_000, 10_000, 100_000, 1_000_000)]
            plan += [(args.events, args.creators, d) for d in (2, 4, 8)]
        rows = []
        for events, creators, depth in plan:
            run_dir = tmp / f"{events}-{creators}-{depth}"
            run_dir.mkdir()
            rows.append(one_run(args.db, events, creators, depth, run_dir))
            print_table(rows[-1:] if len(rows) > 1 else rows)
        sign_rate, verify_rate = signing_rate()
        print()
        print_table(rows)
        print(f"statement signing {sign_rate:,.0f}/s, verification {verify_rate:,.0f}/s")
        if args.db is not None and SCHEMAS:
            led = Ledger.open(args.db)
            with led.engine.begin() as conn:
                for schema in SCHEMAS:
                    conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
            led.close()
        if args.json is not None:
            doc = {"rows": rows, "sign_per_s": round(sign_rate), "verify_per_s": round(verify_rate)}
            args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
