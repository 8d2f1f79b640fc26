"""Event ids and times the SDK makes: UUIDv7 (RFC 9562), time-ordered, never drawn twice; the
current time in the canonical form."""

from __future__ import annotations

import os
import threading
import time
import uuid
from datetime import UTC, datetime

import pytest

from ledger.values import now_timestamp, timestamp, uuid7


def test_ids_are_version_7_with_the_rfc_variant_and_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    ids = [uuid7() for _ in range(5000)]
    after = time.time_ns() // 1_000_000
    for text in ids:
        u = uuid.UUID(text)
        assert str(u) == text  # lower-case hex in the 8-4-4-4-12 form
        assert u.version == 7 and u.variant == uuid.RFC_4122
        assert before <= u.int >> 80 <= after


def test_ids_are_unique_and_ordered_by_their_millisecond() -> None:
    ids = []
    for _ in range(20):
        ids += [uuid7() for _ in range(5000)]
        time.sleep(0.002)
    assert len(set(ids)) == len(ids)
    stamps = [uuid.UUID(i).int >> 80 for i in ids]
    assert stamps == sorted(stamps)
    assert len(set(stamps)) >= 20


def test_the_random_bits_vary_in_every_place() -> None:
    """74 random bits: each of rand_a's 12 and rand_b's 62 takes both values."""
    seen_one, seen_zero = 0, 0
    mask = (0xFFF << 64) | ((1 << 62) - 1)
    for _ in range(2000):
        bits = uuid.UUID(uuid7()).int & mask
        seen_one |= bits
        seen_zero |= ~bits & mask
    assert seen_one == mask and seen_zero == mask


def test_threads_draw_different_ids() -> None:
    out: list[list[str]] = [[] for _ in range(4)]

    def draw(k: int) -> None:
        out[k] = [uuid7() for _ in range(20_000)]

    threads = [threading.Thread(target=draw, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    every = [i for ids in out for i in ids]
    assert len(set(every)) == len(every) == 80_000


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork is POSIX only")
def test_a_forked_child_does_not_draw_its_parents_ids() -> None:
    uuid7()  # the parent's pool holds undrawn digits now
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next ids, to the parent
        os.close(read)
        os.write(write, "\n".join(uuid7() for _ in range(100)).encode())
        os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        child = f.read().split("\n")
    os.waitpid(pid, 0)
    parent = [uuid7() for _ in range(100)]
    tail = {i[15:] for i in parent}  # the random part, whatever the millisecond
    assert len(child) == 100
    assert not tail & {i[15:] for i in child}


def _canonical(ns: int) -> str:
    moment = datetime.fromtimestamp(ns // 10**9, UTC).replace(microsecond=ns // 1000 % 10**6)
    return timestamp(moment.isoformat(), "t")


def test_the_current_time_is_canonical_and_read_from_the_clock() -> None:
    """Across more than a second (so the cached second changes, and a tenth of the readings
    have microseconds below 100,000 to be padded), each time lies between two clock readings
    around it and is its own canonical form."""
    seen = []
    start = time.monotonic()
    while time.monotonic() - start < 1.2:
        before = time.time_ns()
        now = now_timestamp()
        after = time.time_ns()
        assert timestamp(now, "t") == now
        assert _canonical(before) <= now <= _canonical(after)
        seen.append(now)
        time.sleep(0.0002)
    assert len({t[:19] for t in seen}) >= 2
    assert any(t[20] == "0" for t in seen)  # padded
