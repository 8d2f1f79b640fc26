"""Settlement commands: settle run|schedule, statements list|export, verify, report equity, demo."""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click
from rich.table import Table

from ledger import IntegrityError, KeyPair, Ledger, LedgerError, SignatureInvalid, read_key
from ledger.audit import parse_export_line
from ledger.canonical import loads_strict
from ledger.errors import InvalidEvent, ProofInvalid
from ledger.keys import parse_public_key, write_key
from ledger.store import OPERATOR
from ledger.values import format_micros
from settlement import run as settlement_run
from settlement.demo import DemoConfig, run_demo
from settlement.report import Equity, equity
from settlement.scheduler import make_trigger, run_schedule
from settlement.verify import verify_statement

from .common import (
    EXIT_VERIFY_FAILED,
    common_options,
    emit,
    err,
    fail,
    handled,
    open_ledger,
    out,
    party_key,
    progress,
    settings,
    sqlite_file_missing,
)


@click.group()
def settle() -> None:
    """Settlement cycles: value flows from use back along lineage."""


@settle.command("run")
@common_options
def settle_run() -> None:
    """Settle every event since the last cut, now; prints the run id."""
    with handled():
        led = open_ledger()
        try:
            result = settlement_run.settle(led, party_key(OPERATOR))
        finally:
            led.close()
        if result.run is None:
            emit(
                {"run": None, "cut": result.cut, "statements": 0},  # cut: the log size now
                lambda: out.print(
                    f"nothing to settle: only settlement's own events since the last run "
                    f"(log size {result.cut})"
                ),
            )
            return
        emit(
            result.as_json(),
            lambda: out.print(
                f"run {result.run}: settled seq ..{result.cut}, {result.statements} statements, "
                f"{format_micros(result.arrived)} arrived from use"
            ),
        )


@settle.command("schedule")
@click.option("--every", default=None, help="interval: 30s, 15m, 1h, 1d")
@click.option("--cron", default=None, help="crontab expression, in UTC: '0 * * * *'")
@common_options
def settle_schedule(every: str | None, cron: str | None) -> None:
    """Settle periodically until SIGTERM; several schedulers never settle a run twice."""
    with handled():
        try:
            trigger = make_trigger(every, cron)
        except ValueError as e:
            fail(str(e))
        operator = party_key(OPERATOR)
        as_json = settings().json  # the click context does not reach the scheduler's threads
        led = open_ledger()

        def report(
            what: str, result: settlement_run.RunResult | None, error: LedgerError | None
        ) -> None:
            stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            doc: dict[str, Any] = {"at": stamp, "event": what}
            if result is not None:
                doc.update(result.as_json())
            if error is not None:
                doc["error"] = str(error)
            if as_json:
                click.echo(json.dumps(doc))
            else:
                err.print(f"{stamp} {what} {_describe(result, error)}", markup=False)

        try:
            run_schedule(led, operator, trigger, report)
        finally:
            led.close()


def _describe(result: settlement_run.RunResult | None, error: LedgerError | None) -> str:
    if error is not None:
        return str(error)
    if result is None:
        return ""
    if result.run is None:
        return f"nothing new since cut {result.cut}"
    return f"run {result.run} to seq {result.cut}: {result.statements} statements"


@click.group()
def statements() -> None:
    """Signed royalty statements."""


@statements.command("list")
@click.option("--run", "run", type=int, default=None)
@click.option("--party", default=None)
@common_options
def statements_list(run: int | None, party: str | None) -> None:
    """Statements with their totals, in micros under --json."""
    with handled():
        led = open_ledger()
        try:
            rows = settlement_run.list_statements(led, run, party)
        finally:
            led.close()

        def human() -> None:
            table = Table("run", "party", "in", "out", "retained")
            for r in rows:
                table.add_row(
                    str(r["run"]),
                    r["party"],
                    format_micros(r["in"]),
                    format_micros(r["out"]),
                    format_micros(r["retained"]),
                )
            out.print(table)

        emit(rows, human)


@statements.command("export")
@click.option("--run", "run", type=int, required=True)
@click.option("--party", required=True)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None)
@common_options
def statements_export(run: int, party: str, output: Path | None) -> None:
    """One statement as its canonical JSON bytes (what the signature covers, plus signature)."""
    with handled():
        led = open_ledger()
        try:
            st = settlement_run.get_statement(led, run, party)
        finally:
            led.close()
        if st is None:
            fail(f"no statement for party {party!r} in run {run}")
        from settlement.statements import statement_bytes

        data = statement_bytes(st)
        if output is None:
            sys.stdout.buffer.write(data + b"\n")
        else:
            output.write_bytes(data)
            err.print(f"wrote {output}", markup=False)


def _operator_key(text: str) -> str:
    """A hex public key, a .pub file holding one, or the operator's .key file."""
    path = Path(text)
    if path.is_file():
        if path.suffix == ".key":
            return read_key(path).public_hex
        text = path.read_text(encoding="ascii", errors="replace").strip()
    try:
        parse_public_key(text)
    except ValueError:
        fail(f"--operator-key: {text[:20]!r} is neither 64 hex characters nor a key file")
    return text


def _open_log(source: str, tmp: Path) -> Ledger:
    """A database URL as is; an exported JSONL log is loaded into a scratch SQLite database."""
    path = Path(source)
    if not (path.is_file() and path.suffix in (".jsonl", ".json")):
        return Ledger.open(source)
    lines = path.read_text(encoding="utf-8").splitlines()
    if not lines:
        fail(f"{path}: empty")
    header = parse_export_line(lines[0], 1)
    if not isinstance(header, dict):
        fail(f"{path}: line 1 is not an edvex.log/1 header")
    records = (parse_export_line(text, n) for n, text in enumerate(lines[1:], start=2))
    led = Ledger.open(f"sqlite:///{tmp / 'log.db'}")
    led.restore((r for r in records if not isinstance(r, dict)), str(header.get("currency", "USD")))
    if led.head().size != header.get("size"):
        fail(f"{path}: header says {header.get('size')} events, found {led.head().size}")
    return led


@click.command()
@click.argument("statement", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--operator-key", required=True, help="trusted operator public key: HEX or FILE")
@click.option(
    "--log",
    "log_source",
    default=None,
    help="the log: a database URL or an exported FILE.jsonl (default: --db)",
)
@click.option("--no-log", is_flag=True, help="check the signature only")
@common_options
def verify(statement: Path, operator_key: str, log_source: str | None, no_log: bool) -> None:
    """Check a statement's signature, its checkpoint against the log, and recompute it."""
    with handled():
        trusted = _operator_key(operator_key)
        try:
            st = loads_strict(statement.read_bytes(), where=str(statement))
        except InvalidEvent as e:
            fail(f"{statement}: {e.reason}")
        if not isinstance(st, dict):
            fail(f"{statement}: not a statement (a JSON object)")
        try:  # cheap checks first: a bad statement costs no log restore
            verify_statement(st, trusted)
        except (SignatureInvalid, IntegrityError, ProofInvalid, InvalidEvent) as e:
            # a statement that parses but is not what the operator signed failed verification
            emit({"ok": False, "reason": str(e)}, lambda: None)
            fail(f"statement does not verify: {e}", EXIT_VERIFY_FAILED)
        source = log_source or (settings().db if settings().db_given else None)
        if source is None and not sqlite_file_missing(settings().db):
            source = settings().db  # the default database is here: check against it
        if source is None and not no_log:
            err.print("edvex: no log given (--log or --db): checking the signature only",
                      markup=False)  # fmt: skip
            no_log = True
        with tempfile.TemporaryDirectory(prefix="edvex-verify-") as tmp:
            led = None if no_log or source is None else _open_log(source, Path(tmp))
            try:
                result = verify_statement(st, trusted, led)
            except (SignatureInvalid, IntegrityError, ProofInvalid) as e:
                emit({"ok": False, "reason": str(e)}, lambda: None)
                fail(f"statement does not verify: {e}", EXIT_VERIFY_FAILED)
            finally:
                if led is not None:
                    led.close()
        emit(
            {
                "ok": True,
                "run": result.run,
                "party": result.party,
                "lines": result.lines,
                "recomputed": result.checked_against_log,
            },
            lambda: out.print(
                f"ok: run {result.run} statement for {result.party} "
                f"({result.lines} lines) is signed by the operator"
                + (" and matches the log" if result.checked_against_log else "")
            ),
        )


@click.group()
def report() -> None:
    """Reports over settled runs."""


@report.command("equity")
@click.option("--run", "run", type=int, default=None, help="default: the last run")
@common_options
def report_equity(run: int | None) -> None:
    """Of the value that arrived from use, the share each kind of party ended with."""
    with handled():
        led = open_ledger()
        try:
            eq = equity(led, run)
        finally:
            led.close()
        emit(eq.as_json(), lambda: out.print(equity_table(eq)))


def equity_table(eq: Equity) -> Table:
    table = Table(
        "kind",
        "parties",
        "retained",
        "share of value",
        title=f"run {eq.run}: {format_micros(eq.arrived)} arrived from use",
    )
    for r in eq.rows:
        table.add_row(r.kind, str(r.parties), format_micros(r.retained), f"{r.percent()}%")
    return table


_DEMO_MARK = ".edvex-demo"


@click.command()
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("edvex-demo"),
    show_default=True,
    help="where the demo's database and keys go (a directory the demo made is reused)",
)
@click.option("--creators", type=click.IntRange(4, 100_000), default=300, show_default=True)
@click.option(
    "--events",
    type=click.IntRange(1, 50_000_000),
    default=280_000,
    show_default=True,
    help="usage events to record",
)
@common_options
def demo(directory: Path, creators: int, events: int) -> None:
    """A realistic market, recorded through the SDK, settled and verified, in one go."""
    with handled():
        if directory.exists():
            if not (directory / _DEMO_MARK).exists():
                fail(f"{directory} exists and was not made by `edvex demo`; pick another --dir")
            shutil.rmtree(directory)
        directory.mkdir(parents=True)
        (directory / _DEMO_MARK).write_text("made by edvex demo; safe to delete\n")
        keys_dir = directory / "keys"
        url = f"sqlite:///{directory / 'edvex.db'}"
        operator = KeyPair.generate()
        write_key(keys_dir / "operator.key", operator)
        (keys_dir / "operator.pub").write_text(operator.public_hex + "\n")
        owner_events = events // 7
        cfg = DemoConfig(
            creators=creators, deployer_events=events - owner_events, owner_events=owner_events
        )
        started = time.monotonic()
        led = Ledger.open(url)
        try:
            led.initialise(operator)
            with progress() as bar:
                task = bar.add_task("recording usage", total=events)
                result = run_demo(
                    led, operator, cfg, lambda _what, done, _total: bar.update(task, completed=done)
                )
            for party, key in result.keys.items():
                write_key(keys_dir / f"{party}.key", key)
            rows = settlement_run.list_statements(led, result.run.run if result.run else None)
            kinds = {p["party"]: p["kind"] for p in led.parties()}
        finally:
            led.close()
        elapsed = time.monotonic() - started
        _demo_output(directory, url, result, rows, kinds, elapsed)


def _demo_output(
    directory: Path,
    url: str,
    result: Any,
    rows: list[dict[str, Any]],
    kinds: dict[str, str],
    elapsed: float,
) -> None:
    by_kind: dict[str, list[int]] = {}
    for r in rows:
        acc = by_kind.setdefault(kinds.get(r["party"], "?"), [0, 0, 0, 0])
        acc[0] += 1
        acc[1] += r["in"]
        acc[2] += r["out"]
        acc[3] += r["retained"]
    doc = {
        "db": url,
        "events": result.events,
        "run": result.run.as_json(),
        "verified": result.verified,
        "seconds": round(elapsed, 2),
        "by_kind": {
            k: {"statements": v[0], "in": v[1], "out": v[2], "retained": v[3]}
            for k, v in sorted(by_kind.items())
        },
        "equity": result.equity.as_json(),
    }

    def human() -> None:
        table = Table(
            "kind",
            "statements",
            "in",
            "out",
            "retained",
            title=f"run {result.run.run}: {result.events:,} usage events, "
            f"{result.run.statements} statements",
        )
        for kind, (n, i, o, r) in sorted(by_kind.items()):
            table.add_row(kind, str(n), format_micros(i), format_micros(o), format_micros(r))
        out.print(table)
        out.print(equity_table(result.equity))
        out.print(
            f"verified {result.verified} of {result.run.statements} statements against "
            f"the log; {elapsed:.1f}s. Database {url}, keys in {directory / 'keys'}."
        )
        out.print(
            f"Try: edvex --db {url} --keys {directory / 'keys'} statements list --party "
            "creator-0000",
            markup=False,
        )

    emit(doc, human)


COMMANDS = [settle, statements, verify, report, demo]
