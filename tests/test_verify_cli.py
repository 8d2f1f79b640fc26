"""`edvex verify`: a creator checks a royalty statement against the operator key and the log
(DESIGN.md "Statement format"), on SQLite and on PostgreSQL.

Exit 0 when it verifies, 1 when it does not (with the reason on stderr), 2 on unreadable input.
The defective statements are written by the tests, each named after its defect.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from helpers import BACKENDS
from test_cli import Edvex, quick_story, shared_database

from ledger import KeyPair, read_key
from settlement import statements

FIXTURES = Path(__file__).parent / "fixtures" / "statements"


@pytest.fixture
def edvex(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Edvex:
    monkeypatch.chdir(tmp_path)
    return Edvex(db_url, tmp_path / "keys")


@pytest.fixture
def settled(edvex: Edvex, tmp_path: Path) -> dict[str, Any]:
    """Run 1 of the story, settled; alice's statement exported to st.json."""
    quick_story(edvex)
    edvex.run("settle", "run")
    edvex.run("statements", "export", "--run", "1", "--party", "alice", "-o", "st.json")
    return json.loads((tmp_path / "st.json").read_bytes())


@pytest.fixture(scope="module", params=BACKENDS)
def shared(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_problem: str | None
) -> Iterator[tuple[Edvex, dict[str, Any]]]:
    """The same settled run once per backend, for checks that only read the log."""
    directory = tmp_path_factory.mktemp("settled")
    with shared_database(request.param, directory, pg_problem) as url:
        market = Edvex(url, directory / "keys")
        quick_story(market)
        market.run("settle", "run")
        out = directory / "st.json"
        market.run("statements", "export", "--run", "1", "--party", "alice", "-o", str(out))
        yield market, json.loads(out.read_bytes())


@pytest.fixture
def reader(
    shared: tuple[Edvex, dict[str, Any]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Edvex, dict[str, Any]]:
    """`shared`, run from this test's own directory, with alice's statement in st.json."""
    monkeypatch.chdir(tmp_path)
    market, statement = shared
    (tmp_path / "st.json").write_bytes(rfc8785.dumps(statement))
    return market, statement


def _write(path: Path, statement: dict[str, Any]) -> str:
    path.write_bytes(rfc8785.dumps(statement))
    return path.name


def _pub(edvex: Edvex) -> str:
    return str(edvex.keys / "operator.pub")


def test_exported_statement_verifies_against_the_db(
    edvex: Edvex, settled: dict[str, Any], tmp_path: Path
) -> None:
    assert settled["format"] == "edvex.statement/1"
    assert settled["party"] == "alice" and settled["run"] == 1
    assert settled["totals"] == {"in": 3_937_500, "out": 0, "retained": 3_937_500}
    # the exported bytes are canonical (RFC 8785)
    assert (tmp_path / "st.json").read_bytes() == rfc8785.dumps(settled)

    ok = edvex.run("verify", "st.json", "--operator-key", _pub(edvex))  # --log defaults to --db
    assert ok.stdout.startswith("ok:") and "matches the log" in ok.stdout
    doc = edvex.json("verify", "st.json", "--operator-key", _pub(edvex))
    assert doc["ok"] is True and doc["recomputed"] is True
    # the key given as hex, and as the operator's .key file, work too
    hex_key = (edvex.keys / "operator.pub").read_text().strip()
    edvex.run("verify", "st.json", "--operator-key", hex_key)
    edvex.run("verify", "st.json", "--operator-key", hex_key, "--log", edvex.url)


def test_exported_statement_verifies_against_an_exported_log(
    edvex: Edvex, settled: dict[str, Any]
) -> None:
    edvex.run("log", "export", "-o", "log.jsonl")
    ok = edvex.run("verify", "st.json", "--operator-key", _pub(edvex), "--log", "log.jsonl")
    assert "matches the log" in ok.stdout


def _amount_changed(st: dict[str, Any], _key: KeyPair) -> dict[str, Any]:
    st["lines"][0]["amount"] += 1
    return st


def _line_removed(st: dict[str, Any], _key: KeyPair) -> dict[str, Any]:
    st["lines"].pop()
    return st


def _signed_by_another_key(st: dict[str, Any], _key: KeyPair) -> dict[str, Any]:
    return statements.sign(st, KeyPair.generate())


def _checkpoint_beyond_log(st: dict[str, Any], operator: KeyPair) -> dict[str, Any]:
    st["checkpoint"]["size"] = 999  # re-signed, so the checkpoint is what fails
    return statements.sign(st, operator)


def _resigned_amount_changed(st: dict[str, Any], operator: KeyPair) -> dict[str, Any]:
    # the operator's own signature is not enough: the log gives other numbers
    st["lines"][0]["amount"] += 1_000_000
    st["totals"]["in"] += 1_000_000
    st["totals"]["retained"] += 1_000_000
    return statements.sign(st, operator)


def _resigned_run_moved(st: dict[str, Any], operator: KeyPair) -> dict[str, Any]:
    st["cycle"]["from_seq"] = 2
    return statements.sign(st, operator)


@pytest.mark.parametrize(
    ("name", "defect", "reason"),
    [
        pytest.param("statement-amount-changed.json", _amount_changed, "signature", id="amount"),
        pytest.param("statement-line-removed.json", _line_removed, "signature", id="line-removed"),
        pytest.param(
            "statement-signed-by-another-key.json", _signed_by_another_key, "key", id="other-key"
        ),
        pytest.param(
            "statement-checkpoint-beyond-log.json", _checkpoint_beyond_log, "999", id="checkpoint"
        ),
        pytest.param(
            "statement-resigned-amount-changed.json",
            _resigned_amount_changed,
            "differs",
            id="resigned-amount",
        ),
        pytest.param(
            "statement-resigned-cycle-moved.json", _resigned_run_moved, "seq", id="resigned-cycle"
        ),
    ],
)
def test_defective_statement_exits_1_with_the_reason(
    reader: tuple[Edvex, dict[str, Any]],
    tmp_path: Path,
    name: str,
    defect: Callable[[dict[str, Any], KeyPair], dict[str, Any]],
    reason: str,
) -> None:
    edvex, settled = reader
    operator = read_key(edvex.keys / "operator.key")
    path = _write(tmp_path / name, defect(json.loads(json.dumps(settled)), operator))
    bad = edvex.run("verify", path, "--operator-key", _pub(edvex), code=1)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edvex: "), bad.stderr
    assert reason in lines[0]
    doc = edvex.json("verify", path, "--operator-key", _pub(edvex), code=1)
    assert doc["ok"] is False and reason in doc["reason"]


def test_statement_checked_with_another_trusted_key_exits_1(
    reader: tuple[Edvex, dict[str, Any]],
) -> None:
    edvex, _ = reader
    someone = KeyPair.generate().public_hex
    bad = edvex.run("verify", "st.json", "--operator-key", someone, code=1)
    assert "signature invalid" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
    # the signature alone does not need the log, and still fails
    edvex.run("verify", "st.json", "--operator-key", someone, "--no-log", code=1)


def test_statement_against_a_tampered_export_exits_1(
    reader: tuple[Edvex, dict[str, Any]], tmp_path: Path
) -> None:
    edvex, _ = reader
    edvex.run("log", "export", "-o", "log.jsonl")
    text = (tmp_path / "log.jsonl").read_text(encoding="utf-8")
    assert text.count('"revenue":100000000') == 1
    (tmp_path / "forged.jsonl").write_text(
        text.replace('"revenue":100000000', '"revenue":200000000'), encoding="utf-8"
    )
    bad = edvex.run(
        "verify", "st.json", "--operator-key", _pub(edvex), "--log", "forged.jsonl", code=1
    )
    assert "seq 15" in bad.stderr


@pytest.mark.parametrize(
    "fixture",
    ["not-json.json", "not-an-object.json", "duplicate-keys.json", "invalid-utf8.json"],
)
def test_unreadable_statement_exits_2(reader: tuple[Edvex, dict[str, Any]], fixture: str) -> None:
    edvex, _ = reader
    bad = edvex.run("verify", str(FIXTURES / fixture), "--operator-key", _pub(edvex), code=2)
    lines = bad.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edvex: "), bad.stderr


def test_missing_statement_or_key_exits_2(
    reader: tuple[Edvex, dict[str, Any]], tmp_path: Path
) -> None:
    edvex, _ = reader
    missing = edvex.run("verify", "missing.json", "--operator-key", _pub(edvex), code=2)
    assert "missing.json" in missing.stderr
    edvex.run("verify", "st.json", "--operator-key", "not-a-key", code=2)
    (tmp_path / "empty.jsonl").write_text("")
    edvex.run("verify", "st.json", "--operator-key", _pub(edvex), "--log", "empty.jsonl", code=2)
