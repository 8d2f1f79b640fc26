"""EDVEX benchmarks: `python -m bench [--db URL] [--events N] [--creators C] [--depth D]`.

Each figure is printed beside its floor, measured in the same run on the same machine:
ingest through `ledger.Client` beside the raw driver inserting rows of the same width; one
settlement cycle beside a bare GROUP BY over the same usage table; `log verify` and statement
signing. `--scaling` repeats ingest and settlement over growing sizes. Nothing here asserts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import tempfile
from pathlib import Path

from .core import ROW_FILE, print_table, row_to_file, signing_rate


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    p.add_argument(
        "--db", default=None, help="PostgreSQL URL (default: SQLite files in a temp dir)"
    )
    p.add_argument("--events", type=int, default=100_000)
    p.add_argument("--creators", type=int, default=1_000)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--writers", type=int, default=1, help="ingest from this many processes at once")
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
            plan = list(dict.fromkeys(plan))  # each shape once
        rows = []
        ctx = multiprocessing.get_context("spawn")
        for events, creators, depth in plan:
            run_dir = tmp / f"{events}-{creators}-{depth}"
            run_dir.mkdir()
            # each row in a process of its own, so its memory figures are its own (not a pool's
            # daemon: with --writers the row starts processes of its own)
            row_args = (args.db, events, creators, depth, run_dir, args.writers)
            proc = ctx.Process(target=row_to_file, args=row_args)
            proc.start()
            proc.join()
            if proc.exitcode != 0:
                raise SystemExit(f"the benchmark row failed (exit code {proc.exitcode})")
            rows.append(json.loads((run_dir / ROW_FILE).read_text()))
            print_table(rows[-1:] if len(rows) > 1 else rows)
        sign_rate, verify_rate = signing_rate()
        print()
        print_table(rows)
        print(f"statement signing {sign_rate:,.0f}/s, verification {verify_rate:,.0f}/s")
        if args.json is not None:
            doc = {"rows": rows, "sign_per_s": round(sign_rate), "verify_per_s": round(verify_rate)}
            args.json.write_text(json.dumps(doc, indent=2))


if __name__ == "__main__":
    main()
