"""Periodic settlement on APScheduler 3: an interval or a cron expression, misfires coalesced.

Several schedulers may point at one database: each run closes inside the log's write lock after
checking that its run number is still free, so a run is never settled twice.
"""

from __future__ import annotations

import re
import signal
from collections.abc import Callable
from datetime import timedelta
from types import FrameType

from apscheduler.schedulers.blocking import BlockingScheduler
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger

from ledger import KeyPair, Ledger, LedgerError

from .run import RunResult, SettlementConflict, settle

_EVERY = re.compile(r"(\d+)([smhd])")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}


def parse_every(text: str) -> timedelta:
    """'90s', '15m', '1h', '1d' (or combined, '1h30m')."""
    parts = _EVERY.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"--every {text!r}: write a duration such as 30s, 15m, 1h or 1d")
    delta = timedelta(**{_UNITS[u]: 0 for u in _UNITS})
    for number, unit in parts:
        delta += timedelta(**{_UNITS[unit]: int(number)})
    if delta <= timedelta(0):
        raise ValueError(f"--every {text!r}: must be longer than zero")
    return delta


def make_trigger(every: str | None, cron: str | None) -> BaseTrigger:
    if (every is None) == (cron is None):
        raise ValueError("give --every or --cron, one of them")
    if every is not None:
        return IntervalTrigger(seconds=parse_every(every).total_seconds(), timezone="UTC")
    assert cron is not None
    try:
        return CronTrigger.from_crontab(cron, timezone="UTC")
    except ValueError as e:
        raise ValueError(f"--cron {cron!r}: {e}") from None


Report = Callable[[str, RunResult | None, LedgerError | None], None]


def run_schedule(
    ledger: Ledger, operator: KeyPair, trigger: BaseTrigger, report: Report, *, run_now: bool = True
) -> None:
    """Block, settling on each firing, until SIGTERM or SIGINT stops it between runs."""
    scheduler = BlockingScheduler(
        timezone="UTC",
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )

    def job() -> None:
        try:
            report("settled", settle(ledger, operator), None)
        except SettlementConflict as e:
            report("skipped", None, e)
        except LedgerError as e:
            report("failed", None, e)

    scheduler.add_job(job, trigger, id="settle", name="edvex settle run")
    if run_now:
        scheduler.add_job(job, id="settle-now", name="edvex settle run (at start)")

    def stop(_signum: int, _frame: FrameType | None) -> None:
        report("stopping", None, None)
        scheduler.shutdown(wait=False)

    previous = {sig: signal.signal(sig, stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        scheduler.start()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
