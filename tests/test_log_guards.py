"""`log verify` says so when the append-only triggers were dropped."""

from __future__ import annotations

import json
from pathlib import Path

from click.testing import CliRunner
from helpers import Market, worked_example

from cli.main import cli
from ledger import KeyPair, Ledger, write_key


def test_verify_warns_about_missing_triggers(
    db_url: str, ledger: Ledger, operator_key: KeyPair, tmp_path: Path
) -> None:
    worked_example(Market(ledger))
    write_key(tmp_path / "keys" / "operator.key", operator_key)
    args = ["--db", db_url, "--keys", str(tmp_path / "keys"), "--json", "log", "verify"]
    first = CliRunner().invoke(cli, args)
    assert first.exit_code == 0 and json.loads(first.stdout)["missing_guards"] == []
    drop = (
        "DROP TRIGGER events_append_only ON events"
        if ledger.dialect == "postgresql"
        else "DROP TRIGGER events_no_update"
    )
    with ledger.engine.begin() as conn:
        conn.exec_driver_sql(drop)
    second = CliRunner().invoke(cli, args)
    assert second.exit_code == 0
    missing = json.loads(second.stdout)["missing_guards"]
    assert missing == [drop.split()[2]]
    assert "append-only triggers missing" in second.stderr
