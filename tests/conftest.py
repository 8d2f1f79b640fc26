"""Fixtures: every storage test runs on SQLite and on PostgreSQL.

PostgreSQL is reached at EDVEX_TEST_PG (default: postgresql://postgres@127.0.0.1:5432/test). Each
test gets a schema of its own, dropped afterwards. Where PostgreSQL is not reachable the
PostgreSQL half skips, saying how to enable it; under CI=true it fails instead.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from helpers import BACKENDS, PG_URL
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from ledger import KeyPair, Ledger


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", help="run the larger, slower sizes")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--runslow"):
        return
    skip = pytest.mark.skip(reason="larger size; run with --runslow")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _pg_available() -> str | None:
    try:
        engine = create_engine(PG_URL)
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        engine.dispose()
        return None
    except OperationalError as e:
        return str(e.orig).splitlines()[0] if e.orig else str(e)


@pytest.fixture(scope="session")
def pg_problem() -> str | None:
    return _pg_available()


@pytest.fixture(params=BACKENDS)
def db_url(request: pytest.FixtureRequest, tmp_path: Path, pg_problem: str | None) -> Iterator[str]:
    """A fresh, empty database URL on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'edvex.db'}"
        return
    if pg_problem is not None:
        reason = (
            f"PostgreSQL not reachable at {PG_URL} ({pg_problem}); start it or set EDVEX_TEST_PG"
        )
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f"CREATE SCHEMA {schema}"))
    sep = "&" if "?" in PG_URL else "?"
    yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.connect() as conn:
        conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    admin.dispose()


@pytest.fixture
def operator_key() -> KeyPair:
    return KeyPair.generate()


@pytest.fixture
def ledger(db_url: str, operator_key: KeyPair) -> Iterator[Ledger]:
    """An initialised ledger with its operator registered."""
    led = Ledger.open(db_url)
    led.initialise(operator_key)
    yield led
    led.close()
