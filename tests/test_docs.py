"""The examples in docs/ run (STYLE.md, point 10), so the documentation cannot drift from the code.

A block takes part through an HTML comment on the line before it:

- `<!-- test: console -->` on a ```console block: each `$ edvex ...` line runs through click's
  CliRunner and must exit 0, or the status that its `# exit N` comment shows; `> FILE` at the end
  writes its stdout to FILE. `$ python FILE ARGS` runs a script that an earlier block wrote. When
  the doc shows output under a command, the command must print exactly that, once the values that
  differ on every installation (keys, event ids, hashes, signatures, times) are masked.
- `<!-- test: file NAME -->`: the block's text is written to NAME.
- `<!-- test: run -->` on a ```python block: the code runs as it is.
- `<!-- test: setup -->` (docs/sdk.md): the console block that prepares the directory of every
  example on the page.

docs/cli.md is one walkthrough, run in order in one directory. Each example of docs/sdk.md (a
`run` block, or a `file` block and the console blocks after it) runs in a directory of its own,
set up as the page says. Everything runs on SQLite in tmp_path, with the CLI's own defaults
(./edvex.db, ./keys), as the docs write them.
"""

from __future__ import annotations

import contextlib
import glob
import io
import json
import re
import runpy
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from cli.main import cli
from ledger.events import event_hash, parse_event, signed_bytes
from settlement.statements import check_signature

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

_BLOCK = re.compile(
    r"^<!-- test: (?P<kind>\w+)(?: (?P<arg>\S+))? -->\n```(?P<lang>\w*)\n(?P<text>.*?)^```$",
    re.M | re.S,
)
_EXIT = re.compile(r"#\s*exit\s+(\d+)\s*$")

# Values that differ on every installation, masked before output is compared. Base64 comes
# before hex, so that a long hex string is masked the same way in the doc and in the output.
_MASKS = [
    (re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"), "<uuid>"),
    (re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?Z"), "<time>"),
    (re.compile(r"[A-Za-z0-9+/]{40,}={0,2}"), "<base64>"),
    (re.compile(r"[0-9a-f]{16,}"), "<hex>"),
]


@dataclass(frozen=True)
class Block:
    kind: str  # console, file, run or setup
    arg: str | None
    lang: str
    text: str
    line: int


@dataclass(frozen=True)
class Command:
    text: str  # as the doc writes it, after "$ "
    output: list[str]


def blocks(doc: Path) -> list[Block]:
    """The marked blocks of `doc`, in order."""
    source = doc.read_text(encoding="utf-8")
    return [
        Block(m["kind"], m["arg"], m["lang"], m["text"], source.count("\n", 0, m.start()) + 2)
        for m in _BLOCK.finditer(source)
    ]


def commands(block: Block) -> list[Command]:
    """The `$ ...` lines of a console block, each with the output shown under it."""
    found: list[Command] = []
    for line in block.text.splitlines():
        if line.startswith("$ "):
            found.append(Command(line[2:], []))
        else:
            assert found, f"line {block.line}: output before any command: {line!r}"
            found[-1].output.append(line)
    return found


def masked(lines: list[str]) -> list[str]:
    out = []
    for line in lines:
        for pattern, mask in _MASKS:
            line = pattern.sub(mask, line)
        out.append(line.rstrip())
    while out and not out[-1]:
        out.pop()
    return out


class Shell:
    """Runs a doc's commands in the current directory: edvex in-process, python scripts too."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, where: str) -> None:
        self.monkeypatch = monkeypatch
        self.where = where
        self.runner = CliRunner()

    def console(self, block: Block) -> None:
        for command in commands(block):
            self.run(command, f"{self.where}:{block.line}")

    def run(self, command: Command, where: str) -> None:
        expected_code = _EXIT.search(command.text)
        words = shlex.split(command.text, comments=True)
        target = None
        if len(words) > 2 and words[-2] == ">":
            words, target = words[:-2], Path(words[-1])
        if words[0] == "edvex":
            code, stdout, shown = self._edvex(words[1:])
        else:
            assert words[0] in ("python", "python3"), f"{where}: not edvex or python: {command}"
            code, stdout = 0, self.script(words[1:])
            shown = stdout
        want = int(expected_code[1]) if expected_code else 0
        assert code == want, f"{where}: $ {command.text}\nexited {code}, not {want}\n{shown}"
        if target is not None:
            target.write_text(stdout, encoding="utf-8")
            shown = shown.replace(stdout, "", 1)
        if command.output:
            assert masked(shown.splitlines()) == masked(command.output), (
                f"{where}: $ {command.text}\nprinted:\n{shown}"
            )

    def _edvex(self, args: list[str]) -> tuple[int, str, str]:
        result = self.runner.invoke(cli, args, prog_name="edvex")
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.output

    def script(self, words: list[str]) -> str:
        """Run `python SCRIPT ARGS` in-process (shell globs expanded); returns what it printed."""
        script, *args = words
        expanded = [hit for a in args for hit in (sorted(glob.glob(a)) if "*" in a else [a])]
        self.monkeypatch.setattr(sys, "argv", [script, *expanded])
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            runpy.run_path(script, run_name="__main__")
        return printed.getvalue()

    def python(self, block: Block) -> None:
        printed = io.StringIO()
        code = compile(block.text, f"{self.where}:{block.line}", "exec")
        with contextlib.redirect_stdout(printed):
            exec(code, {"__name__": "__main__"})

    def write(self, block: Block) -> None:
        assert block.arg, f"{self.where}:{block.line}: a file block needs a name"
        Path(block.arg).write_text(block.text, encoding="utf-8")

    def do(self, block: Block) -> None:
        actions = {"console": self.console, "file": self.write, "run": self.python}
        assert block.kind in actions, f"{self.where}:{block.line}: unknown marker {block.kind!r}"
        actions[block.kind](block)


@pytest.fixture
def shell_in(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Shell:
    """A shell in a fresh directory, with the CLI's defaults and no environment overrides."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("EDVEX_DB", raising=False)
    monkeypatch.delenv("EDVEX_KEYS", raising=False)
    return Shell(monkeypatch, "docs")


# --- docs/cli.md: one walkthrough -----------------------------------------------------------------

CLI = DOCS / "cli.md"


def test_cli_walkthrough_is_extracted() -> None:
    found = blocks(CLI)
    consoles = [b for b in found if b.kind == "console"]
    assert len(consoles) >= 15
    first = commands(consoles[0])[0]
    assert first.text.startswith("edvex party list") and _EXIT.search(first.text)
    all_commands = [c.text for b in consoles for c in commands(b)]
    assert "edvex init" in all_commands
    assert any(c.startswith("edvex settle run") for c in all_commands)
    assert any(c.startswith("python check_proof.py") for c in all_commands)
    assert {b.arg for b in found if b.kind == "file"} >= {"usage.jsonl", "check_proof.py"}


def test_cli_walkthrough_runs(shell_in: Shell) -> None:
    shell_in.where = "docs/cli.md"
    for block in blocks(CLI):
        shell_in.do(block)
    assert Path("alice.json").exists() and Path("edvex-demo/edvex.db").exists()


# --- docs/sdk.md: each example in its own directory ---------------------------------------------

SDK = DOCS / "sdk.md"


def sdk_examples() -> tuple[Block, list[list[Block]]]:
    """The set-up block and the examples: a `run` block, or a `file` block and its consoles."""
    found = blocks(SDK)
    setups = [b for b in found if b.kind == "setup"]
    assert len(setups) == 1, "docs/sdk.md should have one set-up block"
    examples: list[list[Block]] = []
    for block in found:
        if block.kind in ("run", "file"):
            examples.append([block])
        elif block.kind == "console":
            assert examples, f"docs/sdk.md:{block.line}: a console block before any example"
            examples[-1].append(block)
    return setups[0], examples


def _example_id(example: list[Block]) -> str:
    return example[0].arg or f"line-{example[0].line}"


@pytest.mark.parametrize("example", [pytest.param(e, id=_example_id(e)) for e in sdk_examples()[1]])
def test_sdk_example_runs(shell_in: Shell, example: list[Block]) -> None:
    shell_in.where = "docs/sdk.md"
    setup, _ = sdk_examples()
    shell_in.console(setup)
    for block in example:
        shell_in.do(block)


def test_sdk_examples_are_extracted() -> None:
    setup, examples = sdk_examples()
    assert [c.text for c in commands(setup)][0] == "edvex init"
    names = {_example_id(e) for e in examples}
    assert {"retry.py", "record_usage.py", "new_party.py", "rotate.py"} <= names
    assert all(b.lang == "python" for e in examples for b in e if b.kind != "console")


# --- docs/settlement.md and docs/events.md: the scripts and figures they show ------------------


def test_statements_root_script_gives_the_root_in_the_log(shell_in: Shell) -> None:
    """settlement.md's root.py, run on the README walkthrough's statements, prints the
    statements_root of the run's settlement.closed event."""
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    walkthrough = re.findall(r"^```console\n(.*?)^```", readme, re.M | re.S)[0]
    shell_in.console(Block("console", None, "console", walkthrough, 0))
    (script,) = [b for b in blocks(DOCS / "settlement.md") if b.arg == "root.py"]
    shell_in.write(script)
    parties = [p["party"] for p in json.loads(_cli("--json", "statements", "list", "--run", "1"))]
    for party in parties:
        _cli("statements", "export", "--run", "1", "--party", party, "-o", f"st-{party}.json")
    printed = shell_in.script(["root.py", "st-*.json"]).strip()
    closed = [
        json.loads(line)
        for line in _cli("log", "export").splitlines()
        if '"edvex:settlement:run-1"' in line
    ]
    assert len(parties) == 5 and len(closed) == 1
    assert printed == closed[0]["body"]["statements_root"]


def _cli(*args: str) -> str:
    result = CliRunner().invoke(cli, list(args), prog_name="edvex")
    assert result.exit_code == 0, result.output
    return result.stdout


def _json_blocks(doc: Path) -> list[str]:
    return re.findall(r"^```json\n(.*?)\n^```", doc.read_text(encoding="utf-8"), re.M | re.S)


def test_statements_shown_in_settlement_md_are_signed() -> None:
    shown = [
        json.loads(line)
        for block in _json_blocks(DOCS / "settlement.md")
        for line in ([block] if block.startswith("{\n") else block.splitlines())
    ]
    assert len(shown) == 3
    for statement in shown:
        check_signature(statement, statement["signature"]["key"])


def test_events_shown_in_events_md_are_canonical() -> None:
    examples = _json_blocks(DOCS / "events.md")
    assert len(examples) == 8
    for text in examples:
        assert signed_bytes(parse_event(json.loads(text))).decode() == text
    usage = next(parse_event(json.loads(t)) for t in examples if '"usage.recorded"' in t)
    stated = re.search(r"Its hash is `([0-9a-f]{64})`", (DOCS / "events.md").read_text())
    assert stated is not None and event_hash(usage).hex() == stated[1]
