"""Guarantee 7 of issue 5: private keys stay secret.

* Key files are created with mode 0600 by `edvex init`, `edvex party register` and `edvex demo`,
  whatever the umask.
* No private key is ever printed: every stdout and stderr of a full CLI story (every command,
  with and without `--json`, the error paths included) and every file it writes besides the key
  files are scanned for each private key, as hex in both cases, as base64, and for any 16
  consecutive hex digits of it.
* No private key is ever in an exception message: `repr` and `str` of `KeyPair`, and every error
  (with its whole chain and traceback text) raised by `read_key` on malformed key files made from
  a real key, and the CLI's one line about them.
* Loading a key file that others may read warns: `read_key` raises `KeyFilePermissionWarning`, and
  the CLI prints `edvex: warning:` on stderr and goes on.

`tests/test_cli.py` checks modes and printing on its shorter story; this module widens both.
"""

from __future__ import annotations

import base64
import json
import os
import stat
import traceback
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from figures import FIGURES
from nacl.signing import SigningKey

from cli.main import cli
from ledger import Client, KeyFileError, KeyPair, Ledger, LedgerError, read_key, write_key
from ledger.keys import KeyFilePermissionWarning

# --- running the CLI and looking for secrets ------------------------------------------------------


@dataclass
class Edvex:
    """`edvex --db URL --keys DIR ...` in-process, keeping every stdout and stderr."""

    url: str
    keys: Path
    outputs: list[str] = field(default_factory=list)
    runs: int = 0

    def run(self, *args: str, code: int = 0, as_json: bool = False) -> Result:
        argv = ["--db", self.url, "--keys", str(self.keys), *(["--json"] if as_json else []), *args]
        result = CliRunner().invoke(cli, argv)
        self.outputs += [result.stdout, result.stderr]
        self.runs += 1
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        assert result.exit_code == code, (
            f"edvex {' '.join(args)}: exit {result.exit_code}, expected {code}\n{result.output}"
        )
        return result


def forms(secret_hex: str) -> list[str]:
    """The ways a 32-byte seed could show up in text."""
    seed = bytes.fromhex(secret_hex)
    expanded = seed + SigningKey(seed).verify_key.encode()  # libsodium's 64-byte secret key
    windows = [secret_hex[i : i + 16] for i in range(0, len(secret_hex) - 15)]
    return [
        secret_hex,
        secret_hex.upper(),
        base64.b64encode(seed).decode(),
        base64.urlsafe_b64encode(seed).decode().rstrip("="),
        base64.b64encode(expanded).decode(),
        *windows,
        *(w.upper() for w in windows),
    ]


def leaks(text: str, secrets: dict[str, str]) -> list[str]:
    """Which secrets (by name) appear in `text`, in any of their forms."""
    return sorted(name for name, hex_ in secrets.items() if any(f in text for f in forms(hex_)))


def secrets_in(keys: Path) -> dict[str, str]:
    return {p.stem: p.read_text(encoding="ascii").strip() for p in sorted(keys.glob("*.key"))}


@contextmanager
def umask(mask: int) -> Iterator[None]:
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the story ------------------------------------------------------------------------------------

PARTIES = (
    ("alice", "creator"),
    ("bob", "creator"),
    ("agg", "aggregator"),
    ("dev", "developer"),
    ("shop", "deployer"),
)


def story(edvex: Edvex, work: Path) -> list[Path]:
    """Every command, as a user would run them; returns the files it wrote besides keys."""
    edvex.run("init", as_json=True)
    for name, kind in PARTIES:
        edvex.run("party", "register", name, "--kind", kind, as_json=name == "bob")
    edvex.run("party", "list")
    edvex.run("party", "list", as_json=True)
    edvex.run("asset", "register", "photo-1", "--by", "alice", "--kind", "data")
    edvex.run("asset", "register", "photo-2", "--by", "bob", "--kind", "data", as_json=True)
    for owner, item in (("alice", "photo-1"), ("bob", "photo-2")):
        edvex.run(
            "consent",
            "grant",
            item,
            "--by",
            owner,
            "--to",
            "agg",
            "--purpose",
            "derive",
            "--share",
            "0.5",
            "--id",
            f"g-{owner}",
        )
    edvex.run(
        "derive",
        "dataset-1",
        "--by",
        "agg",
        "--kind",
        "dataset",
        "--purpose",
        "derive",
        "--from",
        "photo-1:3:g-alice",
        "--from",
        "photo-2:1:g-bob",
    )
    edvex.run(
        "consent",
        "grant",
        "dataset-1",
        "--by",
        "agg",
        "--to",
        "dev",
        "--purpose",
        "train",
        "--share",
        "0.1",
        "--id",
        "g-agg",
        as_json=True,
    )
    edvex.run(
        "derive",
        "model-1",
        "--by",
        "dev",
        "--kind",
        "model",
        "--purpose",
        "train",
        "--from",
        "dataset-1:1:g-agg",
    )
    edvex.run(
        "consent",
        "grant",
        "model-1",
        "--by",
        "dev",
        "--to",
        "shop",
        "--purpose",
        "infer",
        "--tier",
        "1000:0.002",
        "--tier",
        "*:0.001",
        "--minimum",
        "5.00",
        "--id",
        "g-shop",
    )
    edvex.run(
        "consent",
        "grant",
        "model-1",
        "--by",
        "dev",
        "--to",
        "*",
        "--purpose",
        "generate",
        "--per-unit",
        "0.01",
        "--id",
        "g-any",
    )
    edvex.run("usage", "record", "model-1", "--by", "dev", "--units", "1", "--revenue", "100")
    edvex.run("usage", "record", "model-1", "--by", "shop", "--units", "1500", as_json=True)
    usage = work / "usage.jsonl"
    usage.write_text(
        '{"asset": "model-1", "units": 10}\n{"asset": "model-1", "units": 5, "revenue": "1.50"}\n'
    )
    edvex.run("usage", "import", str(usage), "--by", "shop")
    edvex.run("settle", "run")
    edvex.run("settle", "run", as_json=True)  # nothing to settle
    edvex.run("consent", "revoke", "g-any", "--by", "dev")
    edvex.run("usage", "record", "model-1", "--by", "shop", "--units", "3")
    edvex.run("settle", "run", as_json=True)
    edvex.run("statements", "list")
    edvex.run("statements", "list", "--party", "alice", as_json=True)
    statement = work / "alice.json"
    edvex.run("statements", "export", "--run", "1", "--party", "alice", "-o", str(statement))
    edvex.run("statements", "export", "--run", "2", "--party", "dev")
    for key in ("operator.pub", "operator.key"):
        edvex.run("verify", str(statement), "--operator-key", str(edvex.keys / key))
    edvex.run(
        "verify",
        str(statement),
        "--operator-key",
        str(edvex.keys / "operator.pub"),
        "--no-log",
        as_json=True,
    )
    checkpoint = work / "checkpoint.json"
    checkpoint.write_text(edvex.run("log", "checkpoint", as_json=True).stdout)
    edvex.run("log", "checkpoint")
    log_file = work / "log.jsonl"
    edvex.run("log", "export", "-o", str(log_file))
    edvex.run("log", "export")
    edvex.run("log", "verify")
    edvex.run("log", "verify", as_json=True)
    edvex.run("log", "prove", "3", as_json=True)
    edvex.run("log", "prove", "--consistency", "5")
    edvex.run("log", "rebuild")
    edvex.run("lineage", "show", "model-1")
    edvex.run("lineage", "show", "model-1", as_json=True)
    edvex.run("report", "equity")
    edvex.run("report", "equity", as_json=True)
    edvex.run("init", as_json=True)  # already initialised
    return [statement, checkpoint, log_file]


def error_paths(edvex: Edvex, work: Path) -> None:
    """Refusals, including ones that read a key: none may show it."""
    edvex.run("party", "register", "alice", "--kind", "creator", code=2)
    edvex.run("usage", "record", "model-1", "--by", "nobody", "--units", "1", code=2)
    edvex.run("usage", "record", "dataset-1", "--by", "shop", "--units", "1", code=2)
    edvex.run("consent", "revoke", "g-shop", "--by", "alice", code=2)
    other = KeyPair.generate()
    edvex.run("verify", str(work / "alice.json"), "--operator-key", other.public_hex, code=1)
    edvex.run(
        "verify", str(work / "alice.json"), "--operator-key", str(edvex.keys / "alice.key"), code=1
    )  # a party's key is not the operator's
    # a damaged key file: the key with a character changed, added or cut
    shop = edvex.keys / "shop.key"
    good = shop.read_text()
    for damaged in (
        good.strip()[:-1] + "g",
        good.strip() + "0",
        good.strip()[:-2],
        good.strip() + "00",
        good.strip() + "\x00",
        good.strip() + " .",
    ):
        shop.write_text(damaged)
        result = edvex.run("usage", "record", "model-1", "--by", "shop", "--units", "1", code=2)
        assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    shop.write_text(good)
    edvex.run("usage", "record", "model-1", "--by", "shop", "--units", "1")


def test_a_full_cli_story_never_shows_a_private_key(
    db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    edvex = Edvex(db_url, tmp_path / "keys")
    with umask(0o000):  # the most permissive umask must not loosen a key file
        files = story(edvex, tmp_path)
    error_paths(edvex, tmp_path)

    secrets = secrets_in(edvex.keys)
    assert set(secrets) == {"operator", *(name for name, _ in PARTIES)}
    for name in secrets:
        path = edvex.keys / f"{name}.key"
        assert mode(path) == 0o600, f"{path}: mode {mode(path):o}"
        assert len(secrets[name]) == 64
        public = (edvex.keys / f"{name}.pub").read_text().strip()
        assert public == read_key(path).public_hex != secrets[name]
    printed = "\n".join(edvex.outputs)
    assert printed.count("\n") > 100, "the story printed its outputs"
    assert leaks(printed, secrets) == [], "private key printed"
    for written in files:
        assert leaks(written.read_text(encoding="utf-8"), secrets) == [], written
    exported = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert any(r.get("record") == "batch" for r in exported)
    FIGURES.append(
        f"keys ({'postgresql' if 'postgresql' in edvex.url else 'sqlite'}): {edvex.runs} CLI runs, "
        f"{sum(len(o) for o in edvex.outputs):,} characters of output and {len(files)} exported "
        f"files scanned for {len(secrets)} private keys in {len(forms('00' * 32))} forms each: "
        "none found; every key file 0600 under umask 000"
    )


def test_demo_writes_private_key_files_and_prints_none(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    directory = tmp_path / "demo"
    with umask(0o022):
        result = CliRunner().invoke(
            cli, ["demo", "--creators", "5", "--events", "200", "--dir", str(directory)]
        )
    assert result.exit_code == 0, result.output
    keys = directory / "keys"
    secrets = secrets_in(keys)
    assert len(secrets) >= 5 + 5 + 1  # creators, market parties, operator
    assert {path.name: mode(path) for path in keys.glob("*.key")} == {
        f"{name}.key": 0o600 for name in secrets
    }
    assert leaks(result.stdout + result.stderr, secrets) == []
    again = CliRunner().invoke(
        cli, ["--json", "demo", "--creators", "5", "--events", "200", "--dir", str(directory)]
    )
    assert again.exit_code == 0, again.output
    assert leaks(again.stdout + again.stderr, secrets_in(keys)) == []


def test_init_and_party_register_create_0600_key_files(db_url: str, tmp_path: Path) -> None:
    edvex = Edvex(db_url, tmp_path / "new" / "keys")  # a keys dir that does not exist yet
    with umask(0o000):
        edvex.run("init")
        edvex.run("party", "register", "carol", "--kind", "creator")
    for name in ("operator", "carol"):
        assert mode(edvex.keys / f"{name}.key") == 0o600
    with pytest.raises(KeyFileError, match="refusing to overwrite"):
        write_key(edvex.keys / "carol.key", KeyPair.generate())


# --- exception messages ---------------------------------------------------------------------------


def full_text(error: BaseException) -> str:
    """The message, repr, args and the whole chain as a traceback would show it."""
    return "\n".join(
        [str(error), repr(error), repr(error.args), *traceback.format_exception(error)]
    )


def test_keypair_repr_hides_the_private_key() -> None:
    key = KeyPair.generate()
    secret = bytes(key.signing_key).hex()
    shown = [repr(key), str(key), f"{key}", f"{key!r}", repr([key]), repr({"k": key})]
    assert leaks("\n".join(shown), {"key": secret}) == []
    assert key.public_hex in repr(key)


def damaged_key_files(secret: str) -> dict[str, bytes]:
    """Malformed key files made from a real key, named after their defect."""
    return {
        "one-char-not-hex": (secret[:-1] + "g").encode(),
        "odd-length": (secret + "0").encode(),
        "31-bytes": secret[:-2].encode(),
        "33-bytes": (secret + "00").encode(),
        "two-keys": (secret + "\n" + secret).encode(),
        "trailing-text": (secret + " # my key").encode(),
        "non-ascii": (secret + "é").encode(),
        "raw-32-bytes": bytes.fromhex(secret),
        "nul-byte": (secret + "\x00").encode(),
        "base64": base64.b64encode(bytes.fromhex(secret)),
        "prefixed": ("ed25519:" + secret).encode(),
    }


def test_errors_from_bad_key_files_never_carry_the_key(tmp_path: Path) -> None:
    secret = bytes(KeyPair.generate().signing_key).hex()
    checked = 0
    for defect, content in damaged_key_files(secret).items():
        path = tmp_path / f"{defect}.key"
        path.write_bytes(content)
        path.chmod(0o600)
        with pytest.raises(KeyFileError) as caught:
            read_key(path)
        text = full_text(caught.value)
        assert leaks(text, {defect: secret}) == [], f"{defect}: {text}"
        assert str(path) in str(caught.value)
        with pytest.raises(LedgerError) as by_client:
            Client.open("sqlite:///" + str(tmp_path / "unused.db"), "p", path, max_delay=0)
        assert leaks(full_text(by_client.value), {defect: secret}) == []
        checked += 1
    missing = tmp_path / "missing.key"
    with pytest.raises(KeyFileError, match="not found"):
        read_key(missing)
    FIGURES.append(f"keys: {checked} damaged key files read; no error message holds the key")


# --- permissions ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loose", [0o644, 0o640, 0o604, 0o660, 0o606, 0o777, 0o610])
def test_reading_a_key_file_others_can_access_warns(tmp_path: Path, loose: int) -> None:
    key = KeyPair.generate()
    path = tmp_path / "k.key"
    write_key(path, key)
    path.chmod(loose)
    with pytest.warns(KeyFilePermissionWarning, match="chmod 600") as caught:
        loaded = read_key(path)
    assert loaded.public_hex == key.public_hex
    assert (
        leaks("\n".join(str(w.message) for w in caught), {"k": bytes(key.signing_key).hex()}) == []
    )


@pytest.mark.parametrize("tight", [0o600, 0o400, 0o700])
def test_reading_a_private_key_file_does_not_warn(tmp_path: Path, tight: int) -> None:
    path = tmp_path / "k.key"
    write_key(path, KeyPair.generate())
    path.chmod(tight)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_key(path)


def test_the_cli_warns_about_a_readable_key_and_goes_on(db_url: str, tmp_path: Path) -> None:
    edvex = Edvex(db_url, tmp_path / "keys")
    edvex.run("init")
    edvex.run("party", "register", "carol", "--kind", "creator")
    carol = edvex.keys / "carol.key"
    carol.chmod(0o644)
    result = edvex.run("asset", "register", "photo", "--by", "carol", "--kind", "data")
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edvex: warning:"), result.stderr
    assert str(carol) in lines[0] and "644" in lines[0]
    assert leaks(result.stdout + result.stderr, secrets_in(edvex.keys)) == []
    (edvex.keys / "operator.key").chmod(0o640)
    result = edvex.run("log", "checkpoint", as_json=True)
    assert "edvex: warning:" in result.stderr and json.loads(result.stdout)["size"] >= 3
    carol.chmod(0o600)
    result = edvex.run("asset", "register", "photo-2", "--by", "carol", "--kind", "data")
    assert "warning" not in result.stderr
    with Ledger.open(db_url) as led:
        assert led.asset("photo") is not None and led.asset("photo-2") is not None
