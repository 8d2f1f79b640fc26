"""Machine instructions per usage event, counted by valgrind: `python -m bench.instructions`.

Wall time on a shared host moves with its load; the number of instructions a process executes
does not. This runs the same ingest twice under `valgrind --tool=cachegrind` (10,000 and 30,000
events by default) and prints the difference per event, so the set-up both runs share cancels
out. `--sdk` counts the client alone (its batches handed to a transport that drops them); without
it the ledger appends too, in the same process on SQLite, in this process with the server's work
left out on PostgreSQL. Memory stalls (the garbage collector's passes, say) are not instructions:
pair the counts with `python -m bench` for time.
"""

from __future__ import annotations

import argparse
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from ledger import Client, KeyPair, Ledger

from .core import build_lineage, drop_schema, fresh_db
from .workers import BATCH, record


class _Dropped:
    """A transport that takes each signed batch and keeps nothing."""

    def append(self, batch: Any) -> None:
        return None


def child(url: str | None, events: int, sdk_only: bool) -> None:
    """The measured process: a market, then `events` uses through one client."""
    with tempfile.TemporaryDirectory(prefix="edvex-instr-") as tmp:
        db = fresh_db(url, Path(tmp), "instructions")
        try:
            led = Ledger.open(db)
            led.initialise(KeyPair.generate())
            keys: dict[str, KeyPair] = {}
            top = build_lineage(led, keys, 1000, 2)
            transport: Any = _Dropped() if sdk_only else led
            with Client(transport, "shop", keys["shop"], max_delay=0, batch_size=BATCH) as c:
                record(c, top, events)
            led.close()
        finally:
            drop_schema(url, db)


def count(args: list[str]) -> int:
    """Instructions executed by `python -m bench.instructions --child ...` under valgrind."""
    cmd = ["valgrind", "--tool=cachegrind", "--cache-sim=no", "--cachegrind-out-file=/dev/null",
           sys.executable, "-m", "bench.instructions", *args]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    found = re.search(r"I\s+refs:\s+([\d,]+)", done.stderr)
    if done.returncode != 0 or found is None:
        raise SystemExit(f"valgrind run failed (exit code {done.returncode}): {done.stderr[-500:]}")
    return int(found.group(1).replace(",", ""))


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.instructions", description=__doc__)
    p.add_argument("--db", default=None, help="PostgreSQL URL (default: a SQLite temp file)")
    p.add_argument("--sdk", action="store_true", help="the client alone, batches dropped")
    p.add_argument("--small", type=int, default=10_000, help="events in the first run")
    p.add_argument("--large", type=int, default=30_000, help="events in the second run")
    p.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child is not None:
        child(args.db, args.child, args.sdk)
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (Debian: apt install valgrind)")
    if not 0 < args.small < args.large:
        raise SystemExit("--small must be positive and less than --large")
    common = (["--db", args.db] if args.db else []) + (["--sdk"] if args.sdk else [])
    small = count([*common, "--child", str(args.small)])
    large = count([*common, "--child", str(args.large)])
    per_event = (large - small) // (args.large - args.small)
    if args.sdk:
        what = "the SDK alone"
    else:
        what = "SDK and ledger, " + ("PostgreSQL (this process)" if args.db else "SQLite")
    # the set-up (keys, the market, the collector's timing) varies by some millions from run to
    # run: a difference of a few hundred events can be below that, and mean nothing
    note = "" if per_event > 0 else "; too few events to measure: the set-up varies more"
    print(f"{what}: {per_event:,} instructions per usage event "
          f"({args.small:,} and {args.large:,} events: {small:,} and {large:,}{note})")  # fmt: skip


if __name__ == "__main__":
    main()
