"""Any one byte changed in an exported statement, still JSON, fails verification (exit 1)."""

from __future__ import annotations

import json
import string
import subprocess
import sys
from pathlib import Path

import rfc8785
from click.testing import CliRunner
from helpers import Market, worked_example
from hypothesis import given, settings
from hypothesis import strategies as st

from cli.main import cli
from ledger import KeyPair, Ledger, write_key
from ledger.canonical import loads_strict
from ledger.errors import InvalidEvent, LedgerError
from settlement import run as settlement_run
from settlement import statements
from settlement.run import settle
from settlement.statements import statement_bytes
from settlement.verify import verify_statement


def _variants(raw: bytes) -> list[bytes]:
    """Every position changed to another character of its class that keeps the JSON valid."""
    out = []
    for i, byte in enumerate(raw):
        ch = chr(byte)
        if ch in string.digits:
            repl = "7" if ch != "7" else "3"
        elif ch in string.ascii_letters:
            repl = "x" if ch != "x" else "y"
        else:
            continue
        changed = raw[:i] + repl.encode() + raw[i + 1 :]
        try:
            loads_strict(changed)
        except InvalidEvent:
            continue
        out.append(changed)
    return out


def test_every_changed_byte_fails(ledger: Ledger, operator_key: KeyPair, tmp_path: Path) -> None:
    worked_example(Market(ledger))
    settle(ledger, operator_key)
    st = settlement_run.get_statement(ledger, 1, "c1")
    assert st is not None
    raw = statement_bytes(st)
    verify_statement(st, operator_key.public_hex, ledger)  # the untouched one verifies
    variants = _variants(raw)
    assert len(variants) > 200
    for changed in variants:
        try:
            verify_statement(json.loads(changed), operator_key.public_hex)
        except LedgerError:
            continue
        raise AssertionError(f"a changed statement verified: {changed!r}")
    # and through the CLI, for a sample, with exit status 1
    keys = tmp_path / "keys"
    write_key(keys / "operator.key", operator_key)
    for n, changed in enumerate(variants[:: max(1, len(variants) // 12)]):
        path = tmp_path / f"changed-{n}.json"
        path.write_bytes(changed)
        args = ["--db", str(ledger.engine.url.render_as_string(hide_password=False)),
                "verify", str(path), "--operator-key", str(keys / "operator.key")]  # fmt: skip
        result = CliRunner().invoke(cli, args)
        assert result.exit_code == 1, (changed, result.stderr)


def test_two_settle_processes_make_one_run(
    db_url: str, ledger: Ledger, operator_key: KeyPair, tmp_path: Path
) -> None:
    worked_example(Market(ledger))
    keys = tmp_path / "keys"
    write_key(keys / "operator.key", operator_key)
    cmd = [sys.executable, "-m", "cli", "--db", db_url, "--keys", str(keys), "--json",
           "settle", "run"]  # fmt: skip
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outs = [p.communicate(timeout=120) for p in procs]
    runs = [json.loads(out)["run"] for out, _ in outs if out.strip()]
    assert runs.count(1) == 1, outs  # one made run 1; the other found it done or lost the race
    assert settlement_run.last_run(ledger)[0] == 1
    closed = list(ledger.events_of(["settlement.closed"], ledger.head().size))
    assert len(closed) == 1


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.fixed_dictionaries(
            {
                "kind": st.sampled_from(sorted(statements.KINDS)),
                "asset": st.text(min_size=1, max_size=8),
                "counterparty": st.text(min_size=1, max_size=8),
                "via": st.text(min_size=1, max_size=8),
                "amount": st.integers(0, 2**40),
            }
        ),
        max_size=20,
    ),
    st.text(min_size=1, max_size=10),
)
def test_stored_bytes_spliced_from_the_unsigned_bytes_equal_the_whole_encoding(
    lines: list[dict[str, object]], party: str
) -> None:
    key = KeyPair.generate()
    built = statements.build(run=3, party=party, currency="USD", from_seq=1, to_seq=9,
                             root=b"\x07" * 32, lines=lines)  # fmt: skip
    signed, unsigned = statements.sign_encoded(built, key)
    assert unsigned == statements.unsigned_bytes(signed)
    assert statements.signed_bytes_from(unsigned, signed["signature"]) == rfc8785.dumps(signed)
    assert statements.root_of_unsigned([(party, unsigned)]) == statements.statements_root([signed])
