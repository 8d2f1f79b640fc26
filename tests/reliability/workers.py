"""Worker processes for the reliability tests: writers and settlement runs that can be SIGKILLed.

Run as a script (`python tests/reliability/workers.py COMMAND ...`); every command prints JSON
lines on stdout (`{"ready": PID}` once the ledger is open, then `{"done": ...}` at the end).

    append  --url U --party P --key FILE --asset A --count N --batch-size B --ids-out FILE
            Records N usage events through `ledger.Client` (SDK-generated ids), after reading one
            line on stdin (so that several writers start at once), and writes the ids to FILE.
    plan    --url U --party P --key FILE --asset A --batches NB --batch-size B --prefix X
            [--from-batch F] [--die-in-batch K]
            Submits planned batches F..NB-1 of B usage events each, with deterministic ids
            (`X-BBBBB-EEEE`) and contents, so that a rerun sends byte-identical events.
            --die-in-batch K: SIGKILL itself inside the append transaction of the K-th batch it
            writes (after its rows and projections are written, before the commit).
    settle  --url U --key FILE [--die-in record|checkpoint]
            Runs `settlement.run.settle` with the operator key; --die-in record: SIGKILL itself
            inside the transaction that records the run (after statements and postings are
            inserted, before the commit); --die-in checkpoint: SIGKILL itself after the commit,
            as the run's checkpoint is about to be signed.
    serve   A fork server: reads one JSON command per line on stdin,
            `{"argv": [COMMAND, ...], "kill_after": SECONDS or null}`, forks a child that runs it
            (imports are paid once, so a kill round costs milliseconds, not an interpreter
            start), waits for the child's readiness, sleeps `kill_after`, SIGKILLs the child if
            it is still running, reaps it and prints `{"result": {"pid", "killed", "code",
            "signal", "ran": SECONDS}}`.

Keys are read with `ledger.read_key` from files the test wrote with `ledger.write_key`; nothing
here prints a key.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any

import settlement.run
from ledger import Client, Ledger, read_key
from ledger import store as ledger_store

OCCURRED_AT = "2026-01-01T00:00:00.000000Z"


def emit(**message: Any) -> None:
    print(json.dumps(message), flush=True)


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


# --- commands -----------------------------------------------------------------------------------


def cmd_append(a: argparse.Namespace, ready: Any) -> None:
    key = read_key(Path(a.key))
    with Ledger.open(a.url) as led:
        led.head()  # connected before the start signal
        ready()
        sys.stdin.readline()  # the start signal: every writer begins at once
        start = time.perf_counter()
        ids = []
        with Client(led, a.party, key, batch_size=a.batch_size, max_delay=0) as client:
            for i in range(a.count):
                ids.append(client.record_usage(a.asset, 1 + i % 9, "0.01"))
        seconds = time.perf_counter() - start
    Path(a.ids_out).write_text("\n".join(ids) + "\n")
    emit(done=len(ids), seconds=round(seconds, 3))


def planned_id(prefix: str, batch: int, k: int) -> str:
    return f"{prefix}-{batch:05d}-{k:04d}"


def planned_event(prefix: str, asset: str, batch: int, k: int) -> dict[str, Any]:
    n = batch * 7919 + k
    return {
        "id": planned_id(prefix, batch, k),
        "type": "usage.recorded",
        "occurred_at": OCCURRED_AT,
        "body": {"asset": asset, "units": n % 50, "revenue": f"{n % 7}.{n % 100:02d}"},
    }


def cmd_plan(a: argparse.Namespace, ready: Any) -> None:
    if a.die_in_batch is not None:
        real, calls = ledger_store.write_effects, [0]

        def write_effects_then_die(conn: Any, effects: Any, uses: Any = ()) -> None:
            real(conn, effects, uses)
            calls[0] += 1
            if calls[0] == a.die_in_batch:
                die()

        ledger_store.write_effects = write_effects_then_die
    key = read_key(Path(a.key))
    with Ledger.open(a.url) as led:
        led.head()
        ready()
        with Client(led, a.party, key, batch_size=a.batch_size, max_delay=0) as client:
            for b in range(a.from_batch, a.batches):
                for k in range(a.batch_size):
                    client.submit(planned_event(a.prefix, a.asset, b, k))
    emit(done=(a.batches - a.from_batch) * a.batch_size)


def cmd_settle(a: argparse.Namespace, ready: Any) -> None:
    if a.die_in == "record":
        real = settlement.run._record_run

        def record_then_die(*args: Any, **kwargs: Any) -> None:
            real(*args, **kwargs)
            die()

        settlement.run._record_run = record_then_die
    elif a.die_in == "checkpoint":
        Ledger.checkpoint = lambda *args, **kwargs: die()  # type: ignore[method-assign]
    operator = read_key(Path(a.key))
    with Ledger.open(a.url) as led:
        led.head()
        ready()
        result = settlement.run.settle(led, operator)
    emit(done=result.as_json())


COMMANDS = {"append": cmd_append, "plan": cmd_plan, "settle": cmd_settle}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="workers.py")
    sub = p.add_subparsers(dest="command", required=True)
    for name in COMMANDS:
        c = sub.add_parser(name)
        c.add_argument("--url", required=True)
        c.add_argument("--key", required=True)
        if name in ("append", "plan"):
            c.add_argument("--party", required=True)
            c.add_argument("--asset", required=True)
            c.add_argument("--batch-size", type=int, default=1000)
        if name == "append":
            c.add_argument("--count", type=int, required=True)
            c.add_argument("--ids-out", required=True)
        if name == "plan":
            c.add_argument("--batches", type=int, required=True)
            c.add_argument("--prefix", required=True)
            c.add_argument("--from-batch", type=int, default=0)
            c.add_argument("--die-in-batch", type=int, default=None)
        if name == "settle":
            c.add_argument("--die-in", choices=["record", "checkpoint"], default=None)
    sub.add_parser("serve")
    return p


def run(argv: list[str], ready: Any) -> None:
    a = parser().parse_args(argv)
    COMMANDS[a.command](a, ready)


# --- the fork server ----------------------------------------------------------------------------


def signal_ready(fd: int) -> None:
    os.write(fd, b"r")
    os.close(fd)


def serve() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        sys.stdout.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: run the command, never return into the server loop
            os.close(ready_r)
            code = 0
            try:
                run(request["argv"], partial(signal_ready, ready_w))
            except BaseException as e:  # report anything, then leave without cleanup
                emit(error=f"{type(e).__name__}: {e}")
                code = 1
            finally:
                sys.stdout.flush()
                os._exit(code)
        os.close(ready_w)
        start = time.monotonic()
        os.read(ready_r, 1)  # the child is ready (or gone: end of file)
        os.close(ready_r)
        status = None
        delay = request.get("kill_after")
        if delay is not None:
            deadline = time.monotonic() + delay
            while status is None:
                reaped, st = os.waitpid(pid, os.WNOHANG)
                if reaped:
                    status = st
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    os.kill(pid, signal.SIGKILL)  # our child, not yet reaped: the pid is its own
                    break
                time.sleep(min(0.002, left))
        if status is None:
            _, status = os.waitpid(pid, 0)
        killed = os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
        emit(
            result={
                "pid": pid,
                "killed": killed,
                "code": os.waitstatus_to_exitcode(status),
                "ran": round(time.monotonic() - start, 3),
            }
        )


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        serve()
        return
    run(argv, lambda: emit(ready=os.getpid()))


if __name__ == "__main__":
    main()
