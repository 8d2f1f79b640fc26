"""A ledger opened before a fork works on both sides: the child gets connections of its own,
and the parent's pooled connections are neither used nor closed by the child."""

from __future__ import annotations

import os

import pytest
from helpers import Market

from ledger import Ledger


@pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork exists on POSIX only")
def test_a_forked_child_appends_through_the_ledger_it_inherited(ledger: Ledger) -> None:
    m = Market(ledger)
    m.party("dep", "deployer")
    m.do("dep", "register_asset", "model-1", "model")
    parent_engine = ledger.engine
    with ledger.engine.connect() as conn:  # the pool now holds an idle connection
        conn.exec_driver_sql("SELECT 1")
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: report, then leave without running the parent's clean-up
        code = 1
        try:
            fresh = ledger.engine is not parent_engine
            m.do("dep", "record_usage", "model-1", 7)
            code = 0 if fresh else 2
        finally:
            os.write(write, bytes([code]))
            os._exit(code)
    os.close(write)
    _, status = os.waitpid(pid, 0)
    reported = os.read(read, 1)
    os.close(read)
    assert reported == b"\x00", "the child had no engine of its own" if reported == b"\x02" else ""
    assert os.waitstatus_to_exitcode(status) == 0
    assert ledger.engine is parent_engine  # the parent keeps its own
    m.do("dep", "record_usage", "model-1", 8)  # and its pooled connection still works
    assert ledger.head().size == 5
    ledger.verify()
