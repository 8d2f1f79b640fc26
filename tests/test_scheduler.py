"""The scheduler: periodic runs, several schedulers on one database, SIGTERM between runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import Market

from ledger import KeyPair, Ledger, write_key
from settlement import run as settlement_run
from settlement.scheduler import make_trigger, parse_every


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("30s", 30), ("15m", 900), ("1h", 3600), ("1d", 86400), ("1h30m", 5400)],
)
def test_parse_every(text: str, seconds: int) -> None:
    assert parse_every(text).total_seconds() == seconds


@pytest.mark.parametrize("text", ["", "1", "h", "1x", "-1h", "0s", "1h 30m"])
def test_parse_every_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="--every"):
        parse_every(text)


def test_trigger_needs_exactly_one_of_every_and_cron() -> None:
    with pytest.raises(ValueError):
        make_trigger(None, None)
    with pytest.raises(ValueError):
        make_trigger("1h", "0 * * * *")
    with pytest.raises(ValueError, match="--cron"):
        make_trigger(None, "not a cron")
    assert make_trigger(None, "*/5 * * * *") is not None


def _scheduler(db_url: str, keys: Path, cwd: Path) -> subprocess.Popen[str]:
    env = {**os.environ, "EDVEX_DB": db_url, "EDVEX_KEYS": str(keys)}
    return subprocess.Popen(
        [sys.executable, "-m", "cli", "--json", "settle", "schedule", "--every", "1s"],
        cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_several_schedulers_never_settle_twice(
    db_url: str, ledger: Ledger, operator_key: KeyPair, tmp_path: Path
) -> None:
    keys = tmp_path / "keys"
    write_key(keys / "operator.key", operator_key)
    m = Market(ledger)
    m.party("dev", "developer")
    m.do("dev", "register_asset", "model", "model")
    procs = [_scheduler(db_url, keys, tmp_path) for _ in range(2)]
    try:
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:  # keep events coming while both schedulers run
            m.do("dev", "record_usage", "model", 1, "1.00")
            time.sleep(0.2)
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outputs = [p.communicate(timeout=60) for p in procs]
    for p, (_out, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    docs = [json.loads(line) for out, _ in outputs for line in out.splitlines() if line]
    settled = [d for d in docs if d["event"] == "settled" and d["run"] is not None]
    assert len(settled) >= 2
    assert any(d["event"] == "stopping" for d in docs)
    runs = sorted(d["run"] for d in settled)
    assert runs == list(range(1, len(runs) + 1))  # no run closed twice, none skipped
    with ledger.engine.connect() as conn:
        rows = conn.execute(settlement_run.select(settlement_run.schema.runs).order_by("run")).all()
    assert [r.run for r in rows] == runs
    for prev, cur in zip(rows, rows[1:], strict=False):
        assert cur.cut_prev == prev.cut and cur.cut > prev.cut  # every event settled once
