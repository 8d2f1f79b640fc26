"""Guarantee 1 of issue 5: concurrent writers lose nothing.

Several OS processes (`workers.py append`, each with its own interpreter and connection) append
usage events at once through `ledger.Client`, each as its own deployer party under its own grant,
against one database. They start together on a signal, once every one of them is connected.
Afterwards the log must hold exactly the events written, `seq` must run 1..N with no gap,
`recorded_at` must never decrease along `seq`, `ledger.verify()` must pass, and every id that
every process got back from `record_usage` must be in the log exactly once.

Sizes: 4 processes x 25,000 events (100,000) on SQLite and on PostgreSQL, and 8 x 12,500 (100,000)
on PostgreSQL, in batches of 1,000 -- the full sizes of the issue, by default.

A last test runs `ledger.verify()` over and over in the test process while 4 writers append: a
verification of a live ledger must pass, whatever commits while it reads.
"""

from __future__ import annotations

import collections
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from figures import FIGURES
from helpers import Market
from sqlalchemy import func, select

from ledger import IntegrityError, Ledger, write_key
from ledger.schema import batches as batches_table
from ledger.schema import events as events_table

WORKERS = Path(__file__).with_name("workers.py")
BATCH_SIZE = 1000


def deployers(ledger: Ledger, n: int, key_dir: Path) -> list[str]:
    """`dev` owns model-1 and grants each of n deployers the use of it; their keys go to files."""
    m = Market(ledger)
    m.party("dev", "developer")
    m.do("dev", "register_asset", "model-1", "model")
    names = []
    for i in range(n):
        name = m.party(f"dep-{i}", "deployer")
        m.do("dev", "grant_consent", "model-1", name, ["infer"], per_unit="0.001", grant=f"g-{i}")
        write_key(key_dir / f"{name}.key", m.keys[name])
        names.append(name)
    return names


def run_writers(
    url: str,
    names: list[str],
    per_process: int,
    tmp_path: Path,
    batch_size: int = BATCH_SIZE,
    meanwhile: Callable[[Callable[[], bool]], None] | None = None,
) -> tuple[dict[str, list[str]], float]:
    """Start one writer per name, wait until all are connected, start them at once; run
    `meanwhile(writing)` in this process while they write."""

    def stderr(name: str) -> str:
        return (tmp_path / f"{name}.stderr").read_text()[-3000:]

    procs, logs = {}, []
    for name in names:
        logs.append((tmp_path / f"{name}.stderr").open("w"))
        procs[name] = subprocess.Popen(
            [sys.executable, str(WORKERS), "append", "--url", url, "--party", name,
             "--key", str(tmp_path / "keys" / f"{name}.key"), "--asset", "model-1",
             "--count", str(per_process), "--batch-size", str(batch_size),
             "--ids-out", str(tmp_path / f"{name}.ids")],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
            stderr=logs[-1],
        )  # fmt: skip
    try:
        for name, p in procs.items():
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.startswith('{"ready"'), f"{name} did not start: {line!r} {stderr(name)}"
        start = time.perf_counter()
        for p in procs.values():
            assert p.stdin is not None
            p.stdin.write("go\n")
            p.stdin.flush()
        if meanwhile is not None:
            meanwhile(lambda: any(p.poll() is None for p in procs.values()))
        for name, p in procs.items():
            out, _ = p.communicate(timeout=600)
            assert p.returncode == 0, f"{name} failed:\n{out}\n{stderr(name)}"
        seconds = time.perf_counter() - start
    finally:
        for p in procs.values():
            if p.poll() is None:
                p.kill()
                p.communicate()
        for log in logs:
            log.close()
    ids = {name: (tmp_path / f"{name}.ids").read_text().split() for name in names}
    return ids, seconds


def check_log(ledger: Ledger, ids: dict[str, set[str]]) -> dict[str, int]:
    """Everything guarantee 1 says of the log after the writers, with the counts behind it."""
    head = ledger.head()
    e = events_table.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(select(e.seq, e.id, e.type, e.actor, e.recorded_at).order_by(e.seq))
        seqs, usage_ids, recorded, actors = [], collections.Counter(), [], []
        for r in rows:
            seqs.append(r.seq)
            recorded.append(r.recorded_at)
            if r.type == "usage.recorded":
                usage_ids[r.id] += 1
                actors.append(r.actor)
                assert r.id in ids.get(r.actor, ()), f"{r.id} is not one of {r.actor}'s ids"
        stored_batches = conn.execute(select(func.count()).select_from(batches_table)).scalar()
    assert seqs == list(range(1, head.size + 1)), "seq is not 1..N without gaps"
    assert all(a <= b for a, b in zip(recorded, recorded[1:], strict=False)), "recorded_at fell"
    assert stored_batches == head.batches
    expected = sum(len(v) for v in ids.values())
    assert ledger.usage_count() == expected
    assert sum(usage_ids.values()) == expected
    for name, own in ids.items():
        missing = [i for i in own if usage_ids[i] != 1]
        assert not missing, (
            f"{name}: {len(missing)} ids not present exactly once, e.g. {missing[:3]}"
        )
    report = ledger.verify()
    assert report.size == head.size
    switches = sum(1 for a, b in zip(actors, actors[1:], strict=False) if a != b)
    return {"size": head.size, "usage": expected, "batches": head.batches, "switches": switches}


def writers_test(
    ledger: Ledger, url: str, tmp_path: Path, processes: int, per_process: int
) -> None:
    names = deployers(ledger, processes, tmp_path / "keys")
    ids, seconds = run_writers(url, names, per_process, tmp_path)
    for name in names:
        assert len(ids[name]) == per_process
    id_sets = {name: set(v) for name, v in ids.items()}
    assert all(len(id_sets[n]) == per_process for n in names), "a writer got one id twice"
    assert len(set().union(*id_sets.values())) == processes * per_process, "an id was shared"
    start = time.perf_counter()
    counts = check_log(ledger, id_sets)
    check_s = time.perf_counter() - start
    total = processes * per_process
    FIGURES.append(
        f"concurrent writers ({ledger.dialect}): {processes} processes x {per_process:,} usage "
        f"events (batches of {BATCH_SIZE:,}) -> {counts['usage']:,} usage rows, each of the "
        f"{total:,} ids once, seq 1..{counts['size']:,} gapless in {counts['batches']:,} batches, "
        f"{counts['switches']} writer switches along seq, verify ok; written in {seconds:.1f} s "
        f"({total / seconds:,.0f} events/s), checked in {check_s:.1f} s"
    )


def test_four_writers_lose_nothing(ledger: Ledger, db_url: str, tmp_path: Path) -> None:
    writers_test(ledger, db_url, tmp_path, processes=4, per_process=25_000)


@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_eight_writers_lose_nothing_on_postgresql(
    ledger: Ledger, db_url: str, tmp_path: Path
) -> None:
    writers_test(ledger, db_url, tmp_path, processes=8, per_process=12_500)


def test_verify_passes_while_writers_append(ledger: Ledger, db_url: str, tmp_path: Path) -> None:
    """`edvex log verify` on a live ledger: a verification that runs while writers append must
    pass (it checks the log as of one moment); an append that commits meanwhile is not tampering.
    4 writers x 5,000 events in batches of 100, `ledger.verify()` in a loop meanwhile."""
    names = deployers(ledger, 4, tmp_path / "keys")
    passed: list[int] = []
    alarms: list[str] = []

    def verify_meanwhile(writing: Callable[[], bool]) -> None:
        while writing():
            try:
                passed.append(ledger.verify().size)
            except IntegrityError as e:
                alarms.append(str(e))

    ids, seconds = run_writers(
        db_url, names, 5_000, tmp_path, batch_size=100, meanwhile=verify_meanwhile
    )
    counts = check_log(ledger, {name: set(v) for name, v in ids.items()})
    FIGURES.append(
        f"verify while writing ({ledger.dialect}): 4 processes x 5,000 usage events (batches of "
        f"100) in {seconds:.1f} s; {len(passed) + len(alarms)} verifications meanwhile: "
        f"{len(passed)} passed (log sizes {min(passed, default=0):,}..{max(passed, default=0):,}), "
        f"{len(alarms)} raised IntegrityError on a sound log"
        + (f" (first: {alarms[0]})" if alarms else "")
        + f"; afterwards {counts['usage']:,} usage rows, verify ok"
    )
    assert not alarms, f"{len(alarms)} false integrity failures, first: {alarms[0]}"
    assert len(passed) >= 3, "the writers finished before verification could overlap them"
