"""The benchmark's measurements, one row per market shape (run by `python -m bench`)."""

from __future__ import annotations

import json
import multiprocessing
import os
import resource
import sqlite3
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy import text

from ledger import Client, KeyPair, Ledger, write_key
from ledger.store import normalise_url
from settlement import statements
from settlement.run import settle

from .workers import BATCH, record, writer

Row = dict[str, Any]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return time.perf_counter() - start, result


def fresh_db(url: str | None, tmp: Path, name: str) -> str:
    """A new empty database: a SQLite file, or a new schema in the PostgreSQL database."""
    if url is None or url.startswith("sqlite"):
        return f"sqlite:///{tmp / (name + '.db')}"
    schema = f"bench_{name}_{uuid.uuid4().hex[:8]}"
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
        with Client(led, "shop", key, max_delay=0, batch_size=BATCH) as c:
            record(c, asset, n)

    seconds, _ = timed(run)
    return seconds


def ingest_processes(url: str, key: KeyPair, asset: str, n: int, writers: int, tmp: Path) -> float:
    """`writers` processes recording n events between them into one ledger, as several
    services of one deployer would: the wall time from their common start to the last commit."""
    key_file = tmp / "shop.key"
    write_key(key_file, key)
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    shares = [n // writers + (1 if i < n % writers else 0) for i in range(writers)]
    procs = [ctx.Process(target=writer, args=(url, key_file, asset, k, start)) for k in shares]
    for proc in procs:
        proc.start()
    time.sleep(2.0)  # the processes import and connect before the clock starts
    began = time.perf_counter()
    start.set()
    for proc in procs:
        proc.join()
        if proc.exitcode != 0:
            raise SystemExit(f"a writer process failed (exit code {proc.exitcode})")
    return time.perf_counter() - began


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


def one_run(
    url: str | None, events: int, creators: int, depth: int, tmp: Path, writers: int = 1
) -> Row:
    """One market: ingest, the bare GROUP BY, settlement, verification, the floor."""
    db = fresh_db(url, tmp, f"n{events}_c{creators}_d{depth}")
    try:
        return _measure(db, events, creators, depth, tmp, writers)
    finally:
        drop_schema(url, db)


def _measure(db: str, events: int, creators: int, depth: int, tmp: Path, writers: int) -> Row:
    led = Ledger.open(db)
    operator = KeyPair.generate()
    led.initialise(operator)
    keys: dict[str, KeyPair] = {}
    top = build_lineage(led, keys, creators, depth)
    if writers == 1:
        ingest_s = ingest(led, keys["shop"], top, events)
    else:
        ingest_s = ingest_processes(db, keys["shop"], top, events, writers, tmp)
    group_s = bare_group_by(led)
    settle_s, result = timed(lambda: settle(led, operator))
    settle_rss = peak_rss_mib()  # before the floor's rows exist
    size = led.head().size
    # before the floor: its rows, and on PostgreSQL the autovacuum their insert sets off on
    # this 2-core machine, would otherwise share the machine with verification
    verify_s, _ = timed(led.verify)
    floor_s = floor_insert(db, events, tmp)
    led.close()
    return {
        "backend": "postgresql" if db.startswith("postgres") else "sqlite",
        "events": events, "creators": creators, "depth": depth, "writers": writers,
        "ingest_per_s": round(events / ingest_s), "floor_per_s": round(events / floor_s),
        "ingest_vs_floor": round(floor_s / ingest_s, 3),
        "settle_s": round(settle_s, 3), "group_by_s": round(group_s, 4),
        "settle_vs_group_by": round(settle_s / group_s, 1) if group_s else None,
        "statements": result.statements, "verify_per_s": round(size / verify_s),
        "settle_rss_mib": round(settle_rss, 1), "peak_rss_mib": round(peak_rss_mib(), 1),
    }  # fmt: skip


ROW_FILE = "row.json"


def row_to_file(
    url: str | None, events: int, creators: int, depth: int, tmp: Path, writers: int = 1
) -> None:
    """`one_run` in a process of its own: the row goes to `tmp / ROW_FILE`."""
    row = one_run(url, events, creators, depth, tmp, writers)
    (tmp / ROW_FILE).write_text(json.dumps(row))


def drop_schema(url: str | None, db: str) -> None:
    """The PostgreSQL schema `fresh_db` made for `db` (SQLite files go with the temp dir)."""
    if url is None or not db.startswith("postgres"):
        return
    schema = db.rsplit("search_path%3D", 1)[1]
    led = Ledger.open(url)
    with led.engine.begin() as conn:
        conn.execute(text(f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
    led.close()


COLUMNS = ["backend", "events", "creators", "depth", "writers", "ingest_per_s", "floor_per_s",
           "ingest_vs_floor", "settle_s", "group_by_s", "settle_vs_group_by", "statements",
           "verify_per_s", "settle_rss_mib", "peak_rss_mib"]  # fmt: skip


def print_table(rows: list[Row]) -> None:
    widths = [max(len(c), *(len(str(r.get(c))) for r in rows)) for c in COLUMNS]
    print("  ".join(c.rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
    for r in rows:
        print("  ".join(str(r.get(c)).rjust(w) for c, w in zip(COLUMNS, widths, strict=True)))
