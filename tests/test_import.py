"""`edvex usage import`: JSONL and CSV files of usage, checked whole before anything is appended,
idempotent on re-import, on SQLite and on PostgreSQL.

The market is the story of test_cli: shop holds grant g-shop to use model-1 and no grant on
dataset-1. Files with a defect on line 3 (or in the CSV header) are in tests/fixtures/usage/,
named after the defect, and copied into the test's directory to be imported.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BACKENDS
from sqlalchemy import create_engine, text
from test_cli import STORY_SIZE, Edvex, log_size, quick_story, shared_database

from ledger.store import normalise_url

FIXTURES = Path(__file__).parent / "fixtures" / "usage"

VALID = {
    "usage.jsonl": (
        '{"asset": "model-1", "units": 10}\n'
        '{"asset": "model-1", "units": 5, "revenue": "1.50"}\n'
        "\n"
        '{"asset": "model-1", "units": 10}\n'  # the same line again is a second use
        '{"asset": "model-1", "units": 7, "id": "req-4"}\n'
    ),
    "usage.csv": (
        "asset,units,revenue,id\nmodel-1,10,,\nmodel-1,5,1.50,\nmodel-1,10,,\nmodel-1,7,,req-4\n"
    ),
}


@pytest.fixture
def edvex(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Edvex:
    monkeypatch.chdir(tmp_path)
    cli = Edvex(db_url, tmp_path / "keys")
    quick_story(cli)
    return cli


@pytest.fixture(scope="module", params=BACKENDS)
def storied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_problem: str | None
) -> Iterator[Edvex]:
    """The same market once per backend, for files that must append nothing."""
    directory = tmp_path_factory.mktemp("storied")
    with shared_database(request.param, directory, pg_problem) as url:
        market = Edvex(url, directory / "keys")
        quick_story(market)
        yield market


def usage_rows(url: str) -> int:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return conn.execute(text("SELECT count(*) FROM usage")).scalar_one()
    finally:
        engine.dispose()


@pytest.mark.parametrize("name", list(VALID))
def test_valid_file_imports_every_line_once(edvex: Edvex, tmp_path: Path, name: str) -> None:
    (tmp_path / name).write_text(VALID[name], encoding="utf-8")
    rows = usage_rows(edvex.url)

    first = edvex.json("usage", "import", name, "--by", "shop")
    assert first == {"lines": 4, "appended": 4, "already": 0}
    assert usage_rows(edvex.url) == rows + 4
    assert log_size(edvex.url) == STORY_SIZE + 4

    again = edvex.json("usage", "import", name, "--by", "shop")
    assert again == {"lines": 4, "appended": 0, "already": 4}
    assert usage_rows(edvex.url) == rows + 4
    assert log_size(edvex.url) == STORY_SIZE + 4
    edvex.run("log", "verify")


def test_imported_usage_is_settled(edvex: Edvex, tmp_path: Path) -> None:
    (tmp_path / "usage.jsonl").write_text(VALID["usage.jsonl"], encoding="utf-8")
    edvex.run("usage", "import", "usage.jsonl", "--by", "shop")
    edvex.run("settle", "run")
    shop = edvex.json("statements", "list", "--run", "1", "--party", "shop")[0]
    # 1500 + 32 units under g-shop: 1000 × 0.002 + 532 × 0.001 = 2.532, raised to the 5.00 minimum
    assert shop["out"] == 5_000_000
    statement = json.loads(
        edvex.run("statements", "export", "--run", "1", "--party", "shop").stdout
    )
    fees = [line for line in statement["lines"] if line["kind"] == "fee_out"]
    assert [line["units"] for line in fees] == [1532]


BAD_LINE_3 = sorted(p.name for p in FIXTURES.glob("line3-*"))


@pytest.mark.parametrize("fixture", BAD_LINE_3)
def test_bad_line_appends_nothing_and_names_the_line(
    storied: Edvex, fixture: str, tmp_path: Path
) -> None:
    rows = usage_rows(storied.url)
    path = shutil.copy(FIXTURES / fixture, tmp_path / fixture)
    bad = storied.run("usage", "import", str(path), "--by", "shop", code=2)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edvex: "), bad.stderr
    assert "line 3" in lines[0]
    assert usage_rows(storied.url) == rows
    assert log_size(storied.url) == STORY_SIZE


@pytest.mark.parametrize(
    "fixture", ["header-unknown-column.csv", "header-missing-units.csv", "header-missing.csv"]
)
def test_csv_with_a_bad_header_exits_2(storied: Edvex, fixture: str, tmp_path: Path) -> None:
    path = shutil.copy(FIXTURES / fixture, tmp_path / fixture)
    bad = storied.run("usage", "import", str(path), "--by", "shop", code=2)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "header" in lines[0], bad.stderr
    assert log_size(storied.url) == STORY_SIZE


def test_empty_file_and_missing_key_exit_2(edvex: Edvex, tmp_path: Path) -> None:
    (tmp_path / "empty.jsonl").write_text("\n\n")
    edvex.run("usage", "import", "empty.jsonl", "--by", "shop", code=2)
    (tmp_path / "usage.jsonl").write_text(VALID["usage.jsonl"], encoding="utf-8")
    edvex.run("usage", "import", "usage.jsonl", "--by", "nobody", code=2)
    assert log_size(edvex.url) == STORY_SIZE


def test_later_batch_breaking_a_rule_keeps_earlier_batches_and_rerun_adds_the_rest(
    edvex: Edvex, tmp_path: Path
) -> None:
    good = [f'{{"asset": "model-1", "units": {n}}}' for n in (1, 2, 3, 4, 5, 6)]
    broken = [*good[:4], '{"asset": "dataset-1", "units": 5}', good[5]]  # no grant on dataset-1
    path = tmp_path / "usage.jsonl"
    path.write_text("\n".join(broken) + "\n", encoding="utf-8")
    rows = usage_rows(edvex.url)

    bad = edvex.run("usage", "import", "usage.jsonl", "--by", "shop", "--batch-size", "2", code=2)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and "line 5" in lines[0], bad.stderr
    assert usage_rows(edvex.url) == rows + 4  # batches 1 and 2 kept, batch 3 refused whole
    assert log_size(edvex.url) == STORY_SIZE + 4

    path.write_text("\n".join(good) + "\n", encoding="utf-8")
    fixed = edvex.json("usage", "import", "usage.jsonl", "--by", "shop", "--batch-size", "2")
    assert fixed == {"lines": 6, "appended": 2, "already": 4}
    assert usage_rows(edvex.url) == rows + 6
    assert log_size(edvex.url) == STORY_SIZE + 6
    again = edvex.json("usage", "import", "usage.jsonl", "--by", "shop", "--batch-size", "4")
    assert again == {"lines": 6, "appended": 0, "already": 6}
    assert usage_rows(edvex.url) == rows + 6
