"""Guarantee 2 of issue 5: crashes lose nothing and half-write nothing.

A writer process (`workers.py plan`) submits planned batches of usage events with deterministic ids
and contents through `ledger.Client`, and is killed with SIGKILL at random points. After each kill
every planned batch must be wholly in the log or wholly absent, the batches present must be a
prefix of the plan, each in one stored batch of consecutive seqs, and the log's head, batches and
usage projection must agree with its events. The next round resumes one batch before the first
absent one (so a complete batch is resubmitted each time and must be a no-op). A few kills are
aimed inside the append transaction itself (the worker SIGKILLs itself after its rows and
projections are written, before the commit). At the end the writer is rerun over the whole plan,
and every planned event must be in the log exactly once; `ledger.verify()` passes.

The same for settlement: a process running `settlement.run.settle` on a market whose cycle takes
a moment is killed at random points, then once inside the transaction that records the run, then
once after that transaction committed (as the checkpoint is about to be signed). After each kill
the run is all or nothing (runs row, statements, postings and the `settlement.closed` event), and
the statements in the end are byte-identical (unsigned bytes, and signed bytes too, Ed25519 being
deterministic) to those of a clean run on a copy of the same log restored into a fresh SQLite
file and settled with the same operator key.

The workers are forked from a server process (`workers.py serve`) that has imported EDVEX once, so
a kill round costs milliseconds rather than an interpreter start; each kill is a real SIGKILL of a
real process holding its own database connection.
"""

from __future__ import annotations

import collections
import json
import queue
import random
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from figures import FIGURES
from helpers import Market, worked_example
from sqlalchemy import func, inspect, select, text
from sqlalchemy.engine import make_url

from ledger import KeyPair, Ledger, write_key
from ledger.schema import batches as batches_table
from ledger.schema import events as events_table
from ledger.schema import usage as usage_table
from settlement import schema as settlement_schema
from settlement import statements as st
from settlement.run import get_statement, list_statements, settle

WORKERS = Path(__file__).with_name("workers.py")
SEED = 20261129

# the writer: random kills 0.05..0.5 s after it is connected
WRITER_KILLS = 20
PLAN_BATCH_SIZE = 20
OPEN_PLAN = 1_000_000  # batches planned by a writer that is to be killed: more than it can write
FINAL_EXTRA = 50  # batches the final rerun writes beyond those already in the log
IN_TRANSACTION_KILLS = (1, 2, 5)  # the k-th batch a writer writes dies before its commit

# the settlement market: creators' items -> one dataset -> one model used by deployers
CREATORS, ITEMS_PER_CREATOR = 4, 1000
DEPLOYERS, USAGE_PER_DEPLOYER = 4, 3000
SETTLE_KILLS = 12


# --- the fork server ----------------------------------------------------------------------------


class Server:
    """`workers.py serve`: runs worker commands one at a time, killing them on request."""

    def __init__(self, log: Path) -> None:
        self._stderr = log.open("w")
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKERS), "serve"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
            bufsize=1,
        )
        self.log = log
        self._lines: queue.Queue[str | None] = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._lines.put(line)
        self._lines.put(None)

    def run(self, argv: list[str], kill_after: float | None = None) -> tuple[dict[str, Any], list]:
        """Run one worker command; returns the server's result and the worker's messages."""
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "kill_after": kill_after}) + "\n")
        self.proc.stdin.flush()
        messages = []
        while True:
            try:
                line = self._lines.get(timeout=300)
            except queue.Empty:
                raise AssertionError(f"worker server silent; see {self.log}") from None
            if line is None:
                raise AssertionError(f"worker server died: {self.log.read_text()[-2000:]}")
            message = json.loads(line)
            if "result" in message:
                return message["result"], messages
            messages.append(message)

    def close(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self._reader.join(timeout=10)
            assert self.proc.stdout is not None
            self.proc.stdout.close()
            self._stderr.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("server") / "stderr.log")
    yield srv
    srv.close()


def errors_of(messages: list[dict[str, Any]]) -> list[str]:
    return [m["error"] for m in messages if "error" in m]


class Workers:
    """Runs worker commands against one database, and after each, waits until the worker's
    database session has ended. On PostgreSQL a killed client's server process may still be
    finishing its last statement (a COMMIT already sent, say), so the state is only final once
    that session is gone; the workers' URL names them (application_name) for this purpose."""

    def __init__(self, server: Server, ledger: Ledger, db_url: str) -> None:
        self.server = server
        self.ledger = ledger
        self.name = f"edvex-worker-{uuid.uuid4().hex[:12]}"
        self.url = db_url
        if ledger.dialect == "postgresql":
            url = make_url(db_url).update_query_dict({"application_name": self.name})
            self.url = url.render_as_string(hide_password=False)

    def run(self, argv: list[str], kill_after: float | None = None) -> tuple[dict[str, Any], list]:
        result = self.server.run([argv[0], "--url", self.url, *argv[1:]], kill_after)
        self._wait_sessions_ended()
        return result

    def _wait_sessions_ended(self) -> None:
        if self.ledger.dialect != "postgresql":
            return  # SQLite has no server: a killed process's transaction is over with it
        q = text("SELECT count(*) FROM pg_stat_activity WHERE application_name = :name")
        deadline = time.monotonic() + 60
        while True:
            with self.ledger.engine.connect() as conn:
                if conn.execute(q, {"name": self.name}).scalar() == 0:
                    return
            assert time.monotonic() < deadline, "a killed worker's session never ended"
            time.sleep(0.005)


# --- the writer ---------------------------------------------------------------------------------


def writer_market(ledger: Ledger, key_dir: Path) -> Path:
    m = Market(ledger)
    m.party("dev", "developer")
    m.party("dep", "deployer")
    m.do("dev", "register_asset", "model-1", "model")
    m.do("dev", "grant_consent", "model-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    key = key_dir / "dep.key"
    write_key(key, m.keys["dep"])
    return key


def plan_argv(key: Path, from_batch: int, batches: int, *extra: str) -> list[str]:
    return ["plan", "--party", "dep", "--key", str(key), "--asset", "model-1",
            "--batches", str(batches), "--batch-size", str(PLAN_BATCH_SIZE),
            "--prefix", "p", "--from-batch", str(from_batch), *extra]  # fmt: skip


def planned_batch(event_id: str) -> int:
    _, batch, _ = event_id.split("-")
    return int(batch)


def check_batches_whole(ledger: Ledger) -> int:
    """Every planned batch is in the log whole or not at all; returns how many are present."""
    head = ledger.head()
    e, b = events_table.c, batches_table.c
    with ledger.engine.connect() as conn:
        rows = conn.execute(
            select(e.id, e.seq, e.batch).where(e.actor == "dep", e.type == "usage.recorded")
        ).all()
        spans = {r.batch: (r.first_seq, r.last_seq, r.actor) for r in conn.execute(select(b))}
        count, low, high = conn.execute(
            select(func.count(), func.min(e.seq), func.max(e.seq))
        ).one()
        usage_rows = conn.execute(select(func.count()).select_from(usage_table)).scalar()
    by_batch: dict[int, list[Any]] = collections.defaultdict(list)
    for r in rows:
        by_batch[planned_batch(r.id)].append(r)
    for planned, present in by_batch.items():
        assert len(present) == PLAN_BATCH_SIZE, (
            f"planned batch {planned} is half-written: {len(present)} of {PLAN_BATCH_SIZE} events"
        )
        stored = {r.batch for r in present}
        assert len(stored) == 1, f"planned batch {planned} is split over stored batches {stored}"
        first, last, actor = spans[stored.pop()]
        assert actor == "dep"
        assert sorted(r.seq for r in present) == list(range(first, last + 1))
        assert last - first + 1 == PLAN_BATCH_SIZE
    assert sorted(by_batch) == list(range(len(by_batch))), "the batches present are not a prefix"
    assert (count, low, high) == (head.size, 1, head.size), "the head and the events disagree"
    assert len(spans) == head.batches
    assert usage_rows == len(rows), "the usage projection and the events disagree"
    return len(by_batch)


def test_killed_writer_half_writes_nothing(
    ledger: Ledger, db_url: str, tmp_path: Path, server: Server
) -> None:
    key = writer_market(ledger, tmp_path)
    workers = Workers(server, ledger, db_url)
    rng = random.Random(f"{SEED}-{ledger.dialect}-writer")
    present, kills, progress, verified = 0, 0, [], 0
    started = time.perf_counter()
    while kills < WRITER_KILLS:
        delay = rng.uniform(0.05, 0.5)
        result, messages = workers.run(plan_argv(key, max(0, present - 1), OPEN_PLAN), delay)
        assert not errors_of(messages), errors_of(messages)
        assert result["killed"], f"the writer finished the plan before the kill: {result}"
        kills += 1
        now = check_batches_whole(ledger)
        assert now >= present, "batches committed before the kill went missing"
        progress.append(now - present)
        present = now
        if kills % 5 == 0:
            ledger.verify()
            verified += 1
    for k in IN_TRANSACTION_KILLS:
        result, messages = workers.run(plan_argv(key, present, OPEN_PLAN, "--die-in-batch", str(k)))
        assert result["killed"] and not errors_of(messages), (result, messages)
        now = check_batches_whole(ledger)
        assert now == present + k - 1, f"killed in batch {k}: {now - present} batches present"
        present = now
    planned = present + FINAL_EXTRA
    result, messages = workers.run(plan_argv(key, 0, planned))
    assert result["code"] == 0 and not errors_of(messages), (result, messages)
    assert check_batches_whole(ledger) == planned
    e = events_table.c
    with ledger.engine.connect() as conn:
        ids = collections.Counter(
            r.id
            for r in conn.execute(select(e.id).where(e.actor == "dep", e.type == "usage.recorded"))
        )
    assert len(ids) == planned * PLAN_BATCH_SIZE and set(ids.values()) == {1}
    assert ledger.usage_count() == planned * PLAN_BATCH_SIZE
    report = ledger.verify()
    FIGURES.append(
        f"killed writer ({ledger.dialect}): {kills} random SIGKILLs 0.05-0.5 s into a run "
        f"({sum(1 for p in progress if p)} after progress, batches committed per round "
        f"{min(progress)}-{max(progress)}), then {len(IN_TRANSACTION_KILLS)} inside the append "
        f"transaction; after each, every planned batch of {PLAN_BATCH_SIZE} whole or absent; "
        f"the rerun of the whole plan from batch 0 ({planned:,} batches) left {len(ids):,} "
        f"events, each once; "
        f"verify ok ({verified} times mid-way, log of {report.size:,}); "
        f"{time.perf_counter() - started:.1f} s"
    )


# --- settlement ---------------------------------------------------------------------------------


def settlement_market(ledger: Ledger) -> None:
    """Creators' items -> dataset D (agg) -> model M (dev), used by deployers under grants with
    shares, per-unit prices, tiers and a minimum: a cycle with a few thousand postings."""
    m = Market(ledger)
    m.party("agg", "aggregator")
    m.party("dev", "developer")
    parents = []
    for p in range(CREATORS):
        name = f"creator-{p}"
        m.keys[name] = KeyPair.generate()
        with m.client(name, batch_size=5000) as c:
            c.register_party("creator")
            for k in range(ITEMS_PER_CREATOR):
                item = f"item-{p}-{k}"
                c.register_asset(item, "data")
                c.grant_consent(item, "agg", ["derive"], share="0.5", grant=f"g-{item}")
                parents.append((item, 1 + k % 7, f"g-{item}"))
    m.do("agg", "derive", "D", "dataset", "derive", parents)
    m.do("agg", "grant_consent", "D", "dev", ["train"], share="0.1", grant="g-D")
    m.do("dev", "derive", "M", "model", "train", [("D", 1, "g-D")])
    for j in range(DEPLOYERS):
        name = m.party(f"dep-{j}", "deployer")
        terms: dict[str, Any] = {"share": "0.2", "per_unit": "0.001"}
        if j == 0:
            terms = {"tiers": [(1000, "0.002"), (None, "0.001")], "minimum": "50"}
        m.do("dev", "grant_consent", "M", name, ["infer"], grant=f"g-M-{j}", **terms)
        with m.client(name, batch_size=5000) as c:
            for i in range(USAGE_PER_DEPLOYER):
                c.record_usage("M", 1 + i % 5, f"0.{i % 100:02d}")


def run_state(ledger: Ledger) -> dict[str, Any]:
    """What a run has left in the database: runs, statements, postings, settlement.closed."""
    e = events_table.c
    with ledger.engine.connect() as conn:
        closed = [
            (r.seq, json.loads(r.body))
            for r in conn.execute(
                select(e.seq, e.body).where(e.type == "settlement.closed").order_by(e.seq)
            )
        ]
        if not inspect(conn).has_table("runs"):
            return {"runs": [], "statements": 0, "postings": 0, "closed": closed}
        runs = [r._asdict() for r in conn.execute(select(settlement_schema.runs))]
        n_st = conn.execute(select(func.count()).select_from(settlement_schema.statements))
        n_po = conn.execute(select(func.count()).select_from(settlement_schema.postings))
        return {"runs": runs, "statements": n_st.scalar(), "postings": n_po.scalar(),
                "closed": closed}  # fmt: skip


def check_all_or_nothing(ledger: Ledger, size: int, clean: dict[str, Any]) -> bool:
    """The run is wholly absent or wholly present; True when present."""
    state = run_state(ledger)
    head = ledger.head()
    if not state["runs"]:
        assert state == {"runs": [], "statements": 0, "postings": 0, "closed": []}, state
        assert head.size == size, f"the log grew by {head.size - size} events without a run"
        return False
    (run,) = state["runs"]
    assert (run["run"], run["cut_prev"], run["cut"], run["closed_seq"]) == (1, 0, size, size + 1)
    assert bytes(run["statements_root"]) == clean["root"]
    assert run["statements"] == state["statements"] == clean["statements"]
    assert state["postings"] == clean["postings"]
    ((seq, body),) = state["closed"]
    assert seq == size + 1 == head.size
    assert body == {"run": 1, "cut": size, "statements_root": clean["root"].hex()}
    return True


def statements_of(ledger: Ledger, run: int) -> dict[str, dict[str, Any]]:
    out = {}
    for row in list_statements(ledger, run=run):
        statement = get_statement(ledger, run, row["party"])
        assert statement is not None
        out[row["party"]] = statement
    return out


def test_killed_settlement_is_all_or_nothing(
    ledger: Ledger, operator_key: KeyPair, db_url: str, tmp_path: Path, server: Server
) -> None:
    settlement_market(ledger)
    started = time.perf_counter()
    records = list(ledger.records())
    size = ledger.head().size
    root_before = ledger.root_at(size)

    copy = Ledger.open(f"sqlite:///{tmp_path / 'copy.db'}")
    copy.restore(records, "USD")
    t0 = time.perf_counter()
    clean_result = settle(copy, operator_key)
    clean_s = time.perf_counter() - t0
    clean_statements = statements_of(copy, 1)
    clean_state = run_state(copy)
    copy.close()
    assert clean_result.run == 1 and clean_result.cut == size
    clean = {
        "root": bytes(clean_state["runs"][0]["statements_root"]),
        "statements": clean_result.statements,
        "postings": clean_result.postings,
    }

    key = tmp_path / "operator.key"
    write_key(key, operator_key)
    workers = Workers(server, ledger, db_url)
    argv = ["settle", "--key", str(key)]
    rng = random.Random(f"{SEED}-{ledger.dialect}-settle")
    # random points, one in each slice of 0..1.2 x the clean run's time, in ascending order: the
    # run commits near its end, so the earlier kills find it unfinished, the later ones may land
    # in its recording transaction or after it (which ends the series)
    span = 1.2 * clean_s
    delays = [rng.uniform(i, i + 1) * span / SETTLE_KILLS for i in range(SETTLE_KILLS)]
    # first a kill aimed inside the transaction that records the run: nothing may remain
    result, messages = workers.run([*argv, "--die-in", "record"])
    assert result["killed"] and not errors_of(messages), (result, messages)
    assert not check_all_or_nothing(ledger, size, clean), "killed before its commit, yet closed"
    outcomes = []
    committed = False
    for delay in delays:
        result, messages = workers.run(argv, delay)
        assert not errors_of(messages), errors_of(messages)
        committed = check_all_or_nothing(ledger, size, clean)
        outcomes.append(("killed" if result["killed"] else "finished", committed))
        if committed:
            break
    nothing = sum(1 for o in outcomes if o == ("killed", False))
    assert nothing >= SETTLE_KILLS // 3, f"too few kills landed before the commit: {outcomes}"
    aimed_after = not committed
    if aimed_after:  # then one aimed just after the commit, as the checkpoint is to be signed
        result, messages = workers.run([*argv, "--die-in", "checkpoint"])
        assert result["killed"] and not errors_of(messages), (result, messages)
        assert check_all_or_nothing(ledger, size, clean), "killed after its commit, yet absent"
    result, messages = workers.run(argv)  # the rerun, to completion
    assert result["code"] == 0 and not errors_of(messages), (result, messages)
    (done,) = [m["done"] for m in messages if "done" in m]
    assert done["run"] is None, "the rerun settled again a cycle that was closed"
    assert check_all_or_nothing(ledger, size, clean)

    got = statements_of(ledger, 1)
    assert sorted(got) == sorted(clean_statements)
    for party, statement in got.items():
        assert st.unsigned_bytes(statement) == st.unsigned_bytes(clean_statements[party]), party
        assert st.statement_bytes(statement) == st.statement_bytes(clean_statements[party]), party
    assert ledger.root_at(size) == root_before
    report = ledger.verify()
    checkpoint = any(c["size"] == size for c in ledger.checkpoints())
    FIGURES.append(
        f"killed settlement ({ledger.dialect}): cycle over {size:,} events "
        f"({DEPLOYERS * USAGE_PER_DEPLOYER:,} usage, {clean['postings']:,} postings, "
        f"{clean['statements']} statements; {clean_s:.2f} s clean on the SQLite copy); "
        f"a SIGKILL inside the recording transaction left nothing; {len(outcomes)} random "
        f"SIGKILLs over 0-{span:.2f} s: {nothing} left nothing, "
        f"{sum(1 for o in outcomes if o[1])} landed after the commit (all)"
        + ("; then one just after the commit left all" if aimed_after else "")
        + f"; the {len(got)} statements after the rerun are byte-identical to the clean run's; "
        f"verify ok (log of {report.size:,}); signed checkpoint at the cut stored: "
        f"{'yes' if checkpoint else 'NO'}; {time.perf_counter() - started:.1f} s"
    )


def test_a_run_killed_before_its_checkpoint_still_gets_it(
    ledger: Ledger, operator_key: KeyPair, db_url: str, tmp_path: Path, server: Server
) -> None:
    """docs/cli.md: "`settle run` signs a checkpoint at each cut by itself". A run killed after
    its recording transaction committed, as it was about to sign that checkpoint, must still end
    with it once settlement is run again; the rerun finds nothing to settle (the run is closed),
    so it is the rerun's business to sign the missing checkpoint."""
    worked_example(Market(ledger))
    cut = ledger.head().size
    key = tmp_path / "operator.key"
    write_key(key, operator_key)
    workers = Workers(server, ledger, db_url)
    argv = ["settle", "--key", str(key)]
    result, messages = workers.run([*argv, "--die-in", "checkpoint"])
    assert result["killed"] and not errors_of(messages), (result, messages)
    assert [r["run"] for r in run_state(ledger)["runs"]] == [1]
    result, messages = workers.run(argv)
    assert result["code"] == 0 and not errors_of(messages), (result, messages)
    sizes = [c["size"] for c in ledger.checkpoints()]
    FIGURES.append(
        f"settlement killed between its commit and its checkpoint ({ledger.dialect}): after a "
        f"rerun, signed checkpoints at sizes {sizes} (the cut is {cut})"
    )
    assert cut in sizes, f"run 1 closed at cut {cut}, but no checkpoint was ever signed there"
