"""README.md's walkthrough, run command by command: every `$ edvex ...` line must exit 0.

This keeps the README true. It runs on SQLite only (the README's own default).
"""

from __future__ import annotations

import re
import shlex
import stat
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli

README = Path(__file__).resolve().parent.parent / "README.md"


def walkthrough() -> list[list[str]]:
    """The ```console block's commands, without `$ edvex` and trailing comments."""
    blocks = re.findall(r"^```console\n(.*?)^```", README.read_text(encoding="utf-8"), re.M | re.S)
    assert len(blocks) == 1, "README.md should hold one ```console walkthrough"
    commands = []
    for line in blocks[0].splitlines():
        if not line.strip():
            continue
        assert line.startswith("$ edvex "), f"not an edvex command: {line!r}"
        commands.append(shlex.split(line.removeprefix("$ edvex "), comments=True))
    return commands


def test_walkthrough_is_extracted() -> None:
    commands = walkthrough()
    assert len(commands) >= 10
    assert commands[0] == ["init"]
    assert ["lineage", "show", "model-1"] in commands
    tier = next(c for c in commands if "--tier" in c)
    assert "*:0.001" in tier  # the quotes are gone, the comment too
    assert all("#" not in arg for c in commands for arg in c)


def test_every_readme_command_exits_0(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    group = ["--db", f"sqlite:///{tmp_path / 'readme.db'}", "--keys", str(tmp_path / "keys")]
    for args in walkthrough():
        result = runner.invoke(cli, [*group, *args])
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == 0, (
            f"README: edvex {shlex.join(args)} exited {result.exit_code}\n{result.stderr}"
        )
    # what the walkthrough's comments promise
    operator_key = tmp_path / "keys" / "operator.key"
    assert stat.S_IMODE(operator_key.stat().st_mode) == 0o600
    assert (tmp_path / "keys" / "alice.key").exists()
    assert (tmp_path / "alice.json").exists()
