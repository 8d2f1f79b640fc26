"""What every command shares: the global options, key files, output and the one error handler."""

from __future__ import annotations

import json
import re
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from sqlalchemy.engine import make_url

from ledger import Client, IntegrityError, KeyPair, Ledger, LedgerError, read_key
from ledger.errors import KeyFileError, ProofInvalid
from ledger.keys import KeyFilePermissionWarning
from ledger.store import normalise_url

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK, EXIT_VERIFY_FAILED, EXIT_BAD_INPUT = 0, 1, 2
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}")

# Piped output is not cut to 80 columns: scripts and files get whole lines.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 240)
err = Console(stderr=True, highlight=False, soft_wrap=True)


@dataclass
class Settings:
    db: str = "sqlite:///edvex.db"
    keys: Path = Path("keys")
    json: bool = False
    db_given: bool = False  # --db or EDVEX_DB was set, not just the default


def _set(name: str) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(ctx: click.Context, param: click.Parameter, value: Any) -> Any:
        if value is not None:
            settings = ctx.ensure_object(Settings)
            setattr(settings, name, Path(value) if name == "keys" else value)
            source = ctx.get_parameter_source(param.name or name)
            if name == "db" and source is not click.core.ParameterSource.DEFAULT:
                settings.db_given = True
        return value

    return callback


def _options(db_default: str | None, keys_default: str | None) -> list[Callable[[F], F]]:
    env = db_default is not None
    return [
        click.option(
            "--db",
            envvar="EDVEX_DB" if env else None,
            default=db_default,
            expose_value=False,
            callback=_set("db"),
            is_eager=True,
            help="database URL [default: sqlite:///edvex.db, or EDVEX_DB]",
        ),
        click.option(
            "--keys",
            envvar="EDVEX_KEYS" if env else None,
            default=keys_default,
            expose_value=False,
            callback=_set("keys"),
            is_eager=True,
            help="key directory [default: ./keys, or EDVEX_KEYS]",
        ),
        click.option(
            "--json",
            "as_json",
            is_flag=True,
            default=None,
            expose_value=False,
            callback=_set("json"),
            help="print one JSON document on stdout",
        ),
    ]


def group_options(f: F) -> F:
    """`--db`, `--keys` and `--json` on the group, with their defaults and environment."""
    for option in reversed(_options("sqlite:///edvex.db", "keys")):
        f = option(f)
    return f


def common_options(f: F) -> F:
    """The same options on every command; given there, they win over the group's."""
    for option in reversed(_options(None, None)):
        f = option(f)
    return f


def settings() -> Settings:
    return click.get_current_context().ensure_object(Settings)


def fail(message: str, code: int = EXIT_BAD_INPUT) -> NoReturn:
    """One line on stderr, then exit with `code`."""
    err.print(f"edvex: {message}", markup=False)
    sys.exit(code)


def exit_code_for(error: LedgerError) -> int:
    return (
        EXIT_VERIFY_FAILED if isinstance(error, IntegrityError | ProofInvalid) else EXIT_BAD_INPUT
    )


@contextmanager
def handled() -> Iterator[None]:
    """Translate library errors into a one-line reason and the exit status of DESIGN.md."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", KeyFilePermissionWarning)
            yield
    except LedgerError as e:
        fail(str(e), exit_code_for(e))
    finally:
        for w in caught if "caught" in locals() else []:
            err.print(f"edvex: warning: {w.message}", markup=False)


def emit(document: Any, human: Callable[[], None] | None = None) -> None:
    """Print `document` as JSON under --json, else call `human` (or print it plainly)."""
    if settings().json:
        click.echo(json.dumps(document, ensure_ascii=False, sort_keys=False))
    elif human is not None:
        human()
    else:
        out.print(document if isinstance(document, str) else json.dumps(document), markup=False)


def sqlite_file_missing(url: str) -> bool:
    """A SQLite URL naming a file that does not exist (opening it would create it)."""
    database = make_url(normalise_url(url)).database if url.startswith("sqlite") else None
    return bool(database) and database != ":memory:" and not Path(str(database)).exists()


def open_ledger(must_exist: bool = True) -> Ledger:
    if must_exist and sqlite_file_missing(settings().db):
        fail(f"no EDVEX log in {settings().db}; run `edvex init` first")
    led = Ledger.open(settings().db)
    if must_exist and not led.initialised():
        led.close()
        fail(f"no EDVEX log in {settings().db}; run `edvex init` first")
    return led


def key_path(party: str) -> Path:
    if not _SAFE_NAME.fullmatch(party):
        fail(
            f"party {party!r}: the CLI keeps keys in files named after parties, so a party "
            "name must be letters, digits and . _ @ + - (starting with a letter or digit)"
        )
    return settings().keys / f"{party}.key"


def party_key(party: str) -> KeyPair:
    path = key_path(party)
    if not path.exists():
        raise KeyFileError(str(path), f"no key for party {party!r} in {settings().keys}/")
    return read_key(path)


def client_for(led: Ledger, party: str, **options: Any) -> Client:
    return Client(led, party, party_key(party), max_delay=0, **options)


def progress() -> Progress:
    """A progress bar on stderr (stdout stays clean for --json)."""
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
