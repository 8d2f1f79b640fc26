"""The `edvex` command line, end to end, on SQLite and on PostgreSQL (DESIGN.md "Public interfaces",
"Exports", "Bad input").

Commands run in-process through click's CliRunner, each with `--db` and `--keys` as group options.
`Edvex`, `story`, `quick_story`, `log_size` and `shared_database` are shared with the other CLI
test modules. Tests of input that must change nothing share one database per backend and module
(`shared_database`), which keeps the many parametrised cases fast; every other test gets a fresh
one from conftest's `db_url`.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import stat
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import nacl.signing
import pytest
import rfc8785
from click.testing import CliRunner, Result
from helpers import BACKENDS, PG_URL, Market
from sqlalchemy import create_engine, text

from cli.main import cli
from ledger import KeyPair, Ledger, merkle, write_key
from ledger.store import OPERATOR, normalise_url

PARTIES = (
    ("alice", "creator"),
    ("bob", "creator"),
    ("agg", "aggregator"),
    ("dev", "developer"),
    ("shop", "deployer"),
)
STORY_SIZE = 16  # init 1, parties 5, assets 2, grants 4, derivations 2, usage 2


@dataclass
class Edvex:
    """`edvex --db URL --keys DIR ...` in-process; remembers every stdout and stderr it saw."""

    url: str
    keys: Path
    runner: CliRunner = field(default_factory=CliRunner)
    outputs: list[str] = field(default_factory=list)

    def run(self, *args: str, code: int | None = 0, as_json: bool = False) -> Result:
        argv = ["--db", self.url, "--keys", str(self.keys), *(["--json"] if as_json else []), *args]
        result = self.runner.invoke(cli, argv)
        self.outputs += [result.stdout, result.stderr]
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if code is not None:
            assert result.exit_code == code, (
                f"edvex {' '.join(args)}: exit {result.exit_code}, expected {code}\n"
                f"stdout: {result.stdout}\nstderr: {result.stderr}"
            )
        return result

    def json(self, *args: str, code: int = 0) -> Any:
        return json.loads(self.run(*args, code=code, as_json=True).stdout)


@pytest.fixture
def edvex(db_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Edvex:
    monkeypatch.chdir(tmp_path)
    return Edvex(db_url, tmp_path / "keys")


@contextmanager
def shared_database(backend: str, directory: Path, pg_problem: str | None) -> Iterator[str]:
    """A fresh database on `backend` for a module-scoped fixture, as conftest's `db_url` makes
    one per test: a SQLite file, or a PostgreSQL schema of its own, dropped afterwards."""
    if backend == "sqlite":
        yield f"sqlite:///{directory / 'edvex.db'}"
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
    try:
        with admin.connect() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        sep = "&" if "?" in PG_URL else "?"
        yield f"{PG_URL}{sep}options={quote(f'-csearch_path={schema}')}"
        with admin.connect() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
    finally:
        admin.dispose()


def log_size(url: str) -> int | None:
    """The log size, or None when the database holds no EDVEX log."""
    led = Ledger.open(url)
    try:
        return led.head().size if led.initialised() else None
    finally:
        led.close()


def story(edvex: Edvex) -> dict[str, int]:
    """README's walkthrough up to usage: two creators, a dataset, a model, a deployer."""
    edvex.run("init")
    for name, kind in PARTIES:
        edvex.run("party", "register", name, "--kind", kind)
    edvex.run("asset", "register", "photo-1", "--by", "alice", "--kind", "data")
    edvex.run("asset", "register", "photo-2", "--by", "bob", "--kind", "data")
    for owner, item in (("alice", "photo-1"), ("bob", "photo-2")):
        grant = edvex.run(
            "consent", "grant", item, "--by", owner, "--to", "agg", "--purpose", "derive",
            "--share", "0.5", "--id", f"g-{owner}",
        )  # fmt: skip
        assert grant.stdout == f"g-{owner}\n"  # prints the grant id
    edvex.run(
        "derive", "dataset-1", "--by", "agg", "--kind", "dataset", "--purpose", "derive",
        "--from", "photo-1:3:g-alice", "--from", "photo-2:1:g-bob",
    )  # fmt: skip
    edvex.run(
        "consent", "grant", "dataset-1", "--by", "agg", "--to", "dev", "--purpose", "train",
        "--share", "0.1", "--id", "g-agg",
    )  # fmt: skip
    edvex.run(
        "derive", "model-1", "--by", "dev", "--kind", "model", "--purpose", "train",
        "--from", "dataset-1:1:g-agg",
    )  # fmt: skip
    edvex.run(
        "consent", "grant", "model-1", "--by", "dev", "--to", "shop", "--purpose", "infer",
        "--tier", "1000:0.002", "--tier", "*:0.001", "--minimum", "5.00", "--id", "g-shop",
    )  # fmt: skip
    own = edvex.json(
        "usage", "record", "model-1", "--by", "dev", "--units", "1", "--revenue", "100"
    )
    metered = edvex.json("usage", "record", "model-1", "--by", "shop", "--units", "1500")
    assert log_size(edvex.url) == STORY_SIZE
    return {"own_use": own["seq"], "metered_use": metered["seq"]}


def quick_story(edvex: Edvex) -> None:
    """The same market as `story`, written through the SDK in one process (much faster), with the
    key files the CLI expects; for tests whose subject is what comes after."""
    keys = {OPERATOR: KeyPair.generate()}
    led = Ledger.open(edvex.url)
    try:
        led.initialise(keys[OPERATOR])
        m = Market(led)
        for name, kind in PARTIES:
            m.party(name, kind)
        m.do("alice", "register_asset", "photo-1", "data")
        m.do("bob", "register_asset", "photo-2", "data")
        m.do("alice", "grant_consent", "photo-1", "agg", ["derive"], share="0.5", grant="g-alice")
        m.do("bob", "grant_consent", "photo-2", "agg", ["derive"], share="0.5", grant="g-bob")
        parents = [("photo-1", 3, "g-alice"), ("photo-2", 1, "g-bob")]
        m.do("agg", "derive", "dataset-1", "dataset", "derive", parents)
        m.do("agg", "grant_consent", "dataset-1", "dev", ["train"], share="0.1", grant="g-agg")
        m.do("dev", "derive", "model-1", "model", "train", [("dataset-1", 1, "g-agg")])
        tiers = [(1000, "0.002"), (None, "0.001")]
        m.do("dev", "grant_consent", "model-1", "shop", ["infer"], tiers=tiers, minimum="5.00",
             grant="g-shop")  # fmt: skip
        m.do("dev", "record_usage", "model-1", 1, "100")
        m.do("shop", "record_usage", "model-1", 1500)
        keys.update(m.keys)
        assert led.head().size == STORY_SIZE
    finally:
        led.close()
    for name, key in keys.items():
        write_key(edvex.keys / f"{name}.key", key)
        (edvex.keys / f"{name}.pub").write_text(key.public_hex + "\n")


# Run 1 of the story, in micros: 100.00 of the owner's revenue and a fee of 5.00 (1000 × 0.002 +
# 500 × 0.001 = 2.50, raised to the 5.00 minimum) arrive at model-1; model-1 pays agg 10%, and
# dataset-1 pays half of that on, 3/4 to alice and 1/4 to bob.
RUN1 = {
    "agg": {"in": 10_500_000, "out": 5_250_000, "retained": 5_250_000},
    "alice": {"in": 3_937_500, "out": 0, "retained": 3_937_500},
    "bob": {"in": 1_312_500, "out": 0, "retained": 1_312_500},
    "dev": {"in": 105_000_000, "out": 10_500_000, "retained": 94_500_000},
    "shop": {"in": 0, "out": 5_000_000, "retained": 0},
}


def _tamper(url: str, seq: int, old: str, new: str) -> None:
    """Change one stored event's body behind the ledger's back."""
    engine = create_engine(normalise_url(url))
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("DROP TRIGGER events_append_only ON events"))
            else:
                conn.execute(text("DROP TRIGGER events_no_update"))
            body = conn.execute(text("SELECT body FROM events WHERE seq = :s"), {"s": seq}).scalar()
            assert old in body
            conn.execute(
                text("UPDATE events SET body = :b WHERE seq = :s"),
                {"b": body.replace(old, new, 1), "s": seq},
            )
    finally:
        engine.dispose()


# --- 1. the story ----------------------------------------------------------------------------


def test_story_verifies_and_a_changed_byte_is_found(edvex: Edvex) -> None:
    seqs = story(edvex)
    ok = edvex.run("log", "verify")
    assert ok.stdout.startswith("ok: 16 events")
    assert edvex.json("log", "verify") == {
        "ok": True,
        "missing_guards": [],
        "size": STORY_SIZE,
        "batches": STORY_SIZE,
        "root": edvex.json("log", "checkpoint")["root"],
    }

    seq = seqs["own_use"]
    _tamper(edvex.url, seq, '"revenue":100000000', '"revenue":900000000')

    bad = edvex.run("log", "verify", code=1)
    assert f"seq {seq}:" in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    doc = edvex.json("log", "verify", code=1)
    assert doc["ok"] is False
    assert doc["seq"] == seq


# --- 2. --json shapes ------------------------------------------------------------------------


def test_json_shapes(edvex: Edvex) -> None:
    init = edvex.json("init")
    assert init["operator"] == "operator"
    assert init["public_key"] == (edvex.keys / "operator.pub").read_text().strip()
    assert len(init["public_key"]) == 64

    party = edvex.json("party", "register", "alice", "--kind", "creator")
    assert party["party"] == "alice"
    assert party["public_key"] == (edvex.keys / "alice.pub").read_text().strip()
    edvex.json("party", "register", "agg", "--kind", "aggregator")
    edvex.run("asset", "register", "photo-1", "--by", "alice", "--kind", "data")
    grant = edvex.json(
        "consent", "grant", "photo-1", "--by", "alice", "--to", "agg", "--purpose", "derive",
        "--share", "0.5",
    )  # fmt: skip
    assert isinstance(grant["grant"], str) and grant["grant"]
    named = edvex.json(
        "consent", "grant", "photo-1", "--by", "alice", "--to", "*", "--purpose", "derive",
        "--share", "0.25", "--id", "g-anyone",
    )  # fmt: skip
    assert named["grant"] == "g-anyone"


def test_settle_statements_checkpoint_and_proofs_json(edvex: Edvex) -> None:
    quick_story(edvex)
    first = edvex.json("settle", "run")
    assert (first["run"], first["cut"], first["statements"]) == (1, STORY_SIZE, 5)
    again = edvex.json("settle", "run")
    assert again == {"run": None, "cut": again["cut"], "statements": 0}
    assert again["cut"] in (STORY_SIZE, STORY_SIZE + 1)  # the last cut, or the size incl. closing
    assert "nothing" in edvex.run("settle", "run").stdout

    rows = edvex.json("statements", "list")
    assert isinstance(rows, list)
    assert all({"run", "party", "in", "out", "retained"} <= set(r) for r in rows)
    got = {r["party"]: {k: r[k] for k in ("in", "out", "retained")} for r in rows}
    assert got == RUN1
    assert {r["run"] for r in rows} == {1}
    # conservation: everything that arrived from use is retained by someone
    assert sum(r["retained"] for r in rows) == 105_000_000
    only = edvex.json("statements", "list", "--run", "1", "--party", "alice")
    assert only == [{"run": 1, "party": "alice", **RUN1["alice"]}]

    cp = edvex.json("log", "checkpoint")
    size = log_size(edvex.url)
    assert cp["size"] == size == STORY_SIZE + 1  # the story and settlement.closed
    assert len(bytes.fromhex(cp["root"])) == 32
    # C2SP tlog-checkpoint body: origin, size, base64 root, blank line, signature lines
    note = cp["note"].split("\n")
    assert note[1] == str(size)
    assert base64.b64decode(note[2]) == bytes.fromhex(cp["root"])
    assert note[3] == "" and note[4].startswith("\u2014 ")

    inc = edvex.json("log", "prove", "3")
    assert {"leaf_index", "tree_size", "leaf_hash", "root", "proof"} <= set(inc)
    assert (inc["leaf_index"], inc["tree_size"], inc["root"]) == (2, size, cp["root"])
    merkle.verify_inclusion(
        bytes.fromhex(inc["leaf_hash"]),
        inc["leaf_index"],
        inc["tree_size"],
        [bytes.fromhex(h) for h in inc["proof"]],
        bytes.fromhex(inc["root"]),
    )
    older = edvex.json("log", "prove", "3", "--size", "5")
    assert older["tree_size"] == 5 and older["leaf_hash"] == inc["leaf_hash"]
    merkle.verify_inclusion(
        bytes.fromhex(older["leaf_hash"]),
        2,
        5,
        [bytes.fromhex(h) for h in older["proof"]],
        bytes.fromhex(older["root"]),
    )

    con = edvex.json("log", "prove", "--consistency", "2")
    assert {"size1", "size2", "root1", "root2", "proof"} <= set(con)
    assert (con["size1"], con["size2"], con["root2"]) == (2, size, cp["root"])
    merkle.verify_consistency(
        con["size1"],
        con["size2"],
        [bytes.fromhex(h) for h in con["proof"]],
        bytes.fromhex(con["root1"]),
        bytes.fromhex(con["root2"]),
    )
    assert edvex.json("log", "prove", "2", "--size", "2")["root"] == con["root1"]


# --- 3. the export, read without EDVEX --------------------------------------------------------


def _mth(leaves: list[bytes]) -> bytes:
    """RFC 9162 Merkle tree hash over leaf hashes."""
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + _mth(leaves[:k]) + _mth(leaves[k:])).digest()


def check_export_without_edvex(path: Path) -> tuple[int, bytes]:
    """Check every event hash and batch signature of an export with json, hashlib, rfc8785 and
    PyNaCl only; returns (size, Merkle root)."""
    lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    header = lines[0]
    assert header == {"format": "edvex.log/1", "currency": "USD", "size": header["size"]}
    leaves: list[bytes] = []
    batch: dict[str, Any] | None = None
    pending: list[bytes] = []

    def close_batch() -> None:
        if batch is None:
            return
        assert len(pending) == batch["last_seq"] - batch["first_seq"] + 1
        digest = hashlib.sha256(b"".join(pending)).digest()
        assert digest.hex() == batch["digest"]
        key = nacl.signing.VerifyKey(bytes.fromhex(batch["key"]))
        key.verify(digest, bytes.fromhex(batch["signature"]))  # raises if it does not verify

    for rec in lines[1:]:
        if rec["record"] == "batch":
            close_batch()
            batch, pending = rec, []
            assert rec["first_seq"] == len(leaves) + 1  # a batch line comes before its events
            continue
        assert rec["record"] == "event"
        assert batch is not None and rec["batch"] == batch["batch"]
        assert rec["actor"] == batch["actor"]
        assert rec["seq"] == len(leaves) + 1
        signed = {k: rec[k] for k in ("id", "type", "actor", "occurred_at", "body")}
        h = hashlib.sha256(rfc8785.dumps(signed)).digest()
        assert h.hex() == rec["hash"], f"seq {rec['seq']}"
        pending.append(h)
        leaf = {**signed, "recorded_at": rec["recorded_at"]}
        leaves.append(hashlib.sha256(b"\x00" + rfc8785.dumps(leaf)).digest())
    close_batch()
    assert len(leaves) == header["size"]
    return header["size"], _mth(leaves)


def test_log_export_is_readable_without_edvex(edvex: Edvex, tmp_path: Path) -> None:
    quick_story(edvex)
    edvex.run("settle", "run")
    result = edvex.run("log", "export", "-o", "f.jsonl")
    assert result.stdout == ""
    path = tmp_path / "f.jsonl"
    size, root = check_export_without_edvex(path)
    assert size == log_size(edvex.url) == STORY_SIZE + 1
    assert root.hex() == edvex.json("log", "checkpoint")["root"]
    # the same bytes on stdout
    assert edvex.run("log", "export").stdout == path.read_text(encoding="utf-8")
    # an inclusion proof's leaf is the leaf an auditor computes from the export
    third = json.loads(path.read_text(encoding="utf-8").splitlines()[6])  # 3 batches, 3 events
    assert third["seq"] == 3
    leaf = {k: third[k] for k in ("id", "type", "actor", "occurred_at", "recorded_at", "body")}
    proof = edvex.json("log", "prove", "3")
    assert proof["leaf_hash"] == hashlib.sha256(b"\x00" + rfc8785.dumps(leaf)).hexdigest()


# --- 4. keys -------------------------------------------------------------------------------


def test_key_files_are_private_and_never_printed(edvex: Edvex, tmp_path: Path) -> None:
    story(edvex)
    edvex.run("settle", "run")
    edvex.run("settle", "run", as_json=True)
    edvex.run("statements", "list")
    edvex.run("statements", "export", "--run", "1", "--party", "alice", "-o", "alice.json")
    edvex.run("statements", "export", "--run", "1", "--party", "alice")
    edvex.run("verify", "alice.json", "--operator-key", str(edvex.keys / "operator.pub"))
    edvex.run("verify", "alice.json", "--operator-key", str(edvex.keys / "operator.key"))
    edvex.run("log", "checkpoint")
    edvex.run("log", "checkpoint", as_json=True)
    edvex.run("log", "export")
    edvex.run("log", "verify")
    edvex.run("party", "list", as_json=True)
    edvex.run("report", "equity")
    edvex.run("lineage", "show", "model-1")
    edvex.run("init", as_json=True)  # already initialised
    edvex.run("party", "register", "alice", "--kind", "creator", code=2)

    key_files = sorted(edvex.keys.glob("*.key"))
    assert {p.stem for p in key_files} == {"operator", *(name for name, _ in PARTIES)}
    printed = "\n".join(edvex.outputs)
    for path in key_files:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        secret = path.read_text(encoding="ascii").strip()
        assert len(secret) == 64
        assert secret not in printed, f"{path.name}'s private key was printed"
        assert secret not in (tmp_path / "alice.json").read_text()
        assert (edvex.keys / f"{path.stem}.pub").read_text().strip() != secret


# --- 5. bad input ----------------------------------------------------------------------------

BAD_INPUT = [
    pytest.param(
        ["asset", "register", "photo-9", "--by", "mallory", "--kind", "data"], id="unknown-party"
    ),
    pytest.param(
        [
            "consent",
            "grant",
            "photo-1",
            "--by",
            "bob",
            "--to",
            "agg",
            "--purpose",
            "derive",
            "--share",
            "0.5",
        ],
        id="grant-by-non-owner",
    ),  # fmt: skip
    pytest.param(
        [
            "consent",
            "grant",
            "photo-1",
            "--by",
            "alice",
            "--to",
            "agg",
            "--purpose",
            "derive",
            "--share",
            "2",
        ],
        id="share-2",
    ),  # fmt: skip
    pytest.param(
        [
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
            "1000-0.002",
        ],
        id="tier-without-colon",
    ),  # fmt: skip
    pytest.param(
        [
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
            "many:0.002",
            "--tier",
            "*:0.001",
        ],
        id="tier-bound-not-a-number",
    ),  # fmt: skip
    pytest.param(
        [
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
        ],
        id="tier-last-not-star",
    ),  # fmt: skip
    pytest.param(
        ["usage", "record", "model-1", "--by", "dev", "--units", "1", "--revenue", "1.2345678"],
        id="revenue-7-decimals",
    ),
    pytest.param(
        [
            "derive",
            "model-2",
            "--by",
            "dev",
            "--kind",
            "model",
            "--purpose",
            "train",
            "--from",
            "dataset-1:g-agg",
        ],
        id="derive-from-without-weight",
    ),  # fmt: skip
    pytest.param(
        ["usage", "record", "dataset-1", "--by", "shop", "--units", "1"], id="usage-without-grant"
    ),
]


@pytest.fixture(scope="module", params=BACKENDS)
def storied(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory, pg_problem: str | None
) -> Iterator[Edvex]:
    """The story's market, once per backend, for inputs that must change nothing."""
    directory = tmp_path_factory.mktemp("storied")
    with shared_database(request.param, directory, pg_problem) as url:
        market = Edvex(url, directory / "keys")
        quick_story(market)
        yield market


@pytest.mark.parametrize("argv", BAD_INPUT)
def test_bad_input_exits_2_and_changes_nothing(
    storied: Edvex, argv: list[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    keys_before = sorted(p.name for p in storied.keys.iterdir())
    result = storied.run(*argv, code=2)
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("edvex: "), result.stderr
    assert log_size(storied.url) == STORY_SIZE
    assert sorted(p.name for p in storied.keys.iterdir()) == keys_before
    storied.run("log", "verify")


def test_command_before_init_exits_2_and_changes_nothing(edvex: Edvex) -> None:
    for argv in (
        ["party", "register", "alice", "--kind", "creator"],
        ["log", "verify"],
        ["settle", "run"],
        ["statements", "list"],
    ):
        result = edvex.run(*argv, code=2)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "init" in lines[0], result.stderr
        assert log_size(edvex.url) is None
    assert not (edvex.keys / "alice.key").exists()


# --- 6. lineage ------------------------------------------------------------------------------


def _shape(node: dict[str, Any]) -> dict[str, Any]:
    keep = {
        k: node[k] for k in ("asset", "owner", "kind", "normalised", "share", "grant") if k in node
    }
    keep["parents"] = sorted((_shape(p) for p in node["parents"]), key=lambda p: p["asset"])
    return keep


def test_lineage_show_json_is_the_nested_tree(edvex: Edvex) -> None:
    quick_story(edvex)
    tree = edvex.json("lineage", "show", "model-1")
    assert _shape(tree) == {
        "asset": "model-1",
        "owner": "dev",
        "kind": "model",
        "parents": [
            {
                "asset": "dataset-1",
                "owner": "agg",
                "kind": "dataset",
                "normalised": "1/1",
                "share": "0.1",
                "grant": "g-agg",
                "parents": [
                    {
                        "asset": "photo-1",
                        "owner": "alice",
                        "kind": "data",
                        "normalised": "3/4",
                        "share": "0.5",
                        "grant": "g-alice",
                        "parents": [],
                    },
                    {
                        "asset": "photo-2",
                        "owner": "bob",
                        "kind": "data",
                        "normalised": "1/4",
                        "share": "0.5",
                        "grant": "g-bob",
                        "parents": [],
                    },
                ],
            }
        ],
    }
    human = edvex.run("lineage", "show", "model-1").stdout
    assert "3/4" in human and "1/4" in human
    edvex.run("lineage", "show", "no-such-asset", code=2)


# --- 7. rebuild ------------------------------------------------------------------------------


def _projection_counts(url: str) -> dict[str, int]:
    engine = create_engine(normalise_url(url))
    try:
        with engine.connect() as conn:
            return {
                t: conn.execute(text(f'SELECT count(*) FROM "{t}"')).scalar_one()
                for t in ("parties", "assets", "grants", "edges", "usage")
            }
    finally:
        engine.dispose()


def test_rebuild_keeps_statements_and_settlement_working(edvex: Edvex) -> None:
    quick_story(edvex)
    edvex.json("settle", "run")
    listed = edvex.json("statements", "list")
    tree = edvex.json("lineage", "show", "model-1")
    counts = _projection_counts(edvex.url)
    assert counts == {"parties": 6, "assets": 4, "grants": 4, "edges": 3, "usage": 2}

    assert edvex.json("log", "rebuild") == {"replayed": STORY_SIZE + 1}
    assert edvex.run("log", "rebuild").exit_code == 0
    assert _projection_counts(edvex.url) == counts
    assert edvex.json("statements", "list") == listed
    assert edvex.json("lineage", "show", "model-1") == tree
    edvex.run("log", "verify")
    assert edvex.json("settle", "run")["run"] is None

    edvex.run("usage", "record", "model-1", "--by", "dev", "--units", "1", "--revenue", "10")
    second = edvex.json("settle", "run")
    assert second["run"] == 2
    run2 = {r["party"]: r for r in edvex.json("statements", "list", "--run", "2")}
    # 10.00 of own revenue and shop's 5.00 minimum (no usage, grant live), × 0.1 × 3/4 × 0.5
    assert run2["alice"]["in"] == 562_500
    edvex.run("statements", "export", "--run", "2", "--party", "alice", "-o", "a2.json")
    edvex.run("verify", "a2.json", "--operator-key", str(edvex.keys / "operator.pub"))
