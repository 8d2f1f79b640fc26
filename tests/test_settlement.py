"""Settlement: DESIGN.md's worked example, pricing, runs, determinism, conflicts and crashes."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from helpers import Market, ts, worked_example
from sqlalchemy import func, select

from ledger import KeyPair, Ledger
from settlement import run as settlement_run
from settlement import schema as sschema
from settlement.report import equity
from settlement.run import SettlementConflict, compute_cycle, settle
from settlement.statements import statement_bytes, unsigned_bytes
from settlement.verify import verify_run, verify_statement


def statements_of(ledger: Ledger, run: int) -> dict[str, dict[str, Any]]:
    out = {}
    for row in settlement_run.list_statements(ledger, run=run):
        st = settlement_run.get_statement(ledger, run, row["party"])
        assert st is not None
        out[row["party"]] = st
    return out


def lines(st: dict[str, Any], kind: str) -> list[dict[str, Any]]:
    return [line for line in st["lines"] if line["kind"] == kind]


def test_worked_example_matches_design(ledger: Ledger, operator_key: KeyPair) -> None:
    worked_example(Market(ledger))
    result = settle(ledger, operator_key)
    assert result.run == 1 and result.arrived == 100_000_000
    sts = statements_of(ledger, 1)
    assert sorted(sts) == ["agg", "c1", "c2", "dev"]
    # M retains 90.00 and pays agg 10.00; D pays c1 3.75 and c2 1.25 and retains 5.00.
    assert lines(sts["dev"], "retained") == [
        {"kind": "retained", "asset": "M", "counterparty": "dev", "via": "M", "amount": 90_000_000}
    ]
    assert lines(sts["dev"], "royalty_out")[0]["amount"] == 10_000_000
    assert lines(sts["dev"], "revenue")[0]["amount"] == 100_000_000
    assert lines(sts["agg"], "royalty_in")[0]["amount"] == 10_000_000
    assert lines(sts["agg"], "retained")[0]["amount"] == 5_000_000
    assert lines(sts["c1"], "royalty_in") == [
        {"kind": "royalty_in", "asset": "item-1", "counterparty": "agg", "via": "D",
         "amount": 3_750_000}
    ]  # fmt: skip
    assert lines(sts["c2"], "royalty_in")[0]["amount"] == 1_250_000
    assert sts["c1"]["totals"] == {"in": 3_750_000, "out": 0, "retained": 3_750_000}
    assert sts["dev"]["totals"] == {"in": 100_000_000, "out": 10_000_000, "retained": 90_000_000}
    # Creators end with 5% of the revenue.
    eq = {row.kind: row for row in equity(ledger, 1).rows}
    assert eq["creator"].retained == 5_000_000 and eq["creator"].percent() == "5.00"


def test_statement_format_and_signature(ledger: Ledger, operator_key: KeyPair) -> None:
    worked_example(Market(ledger))
    settle(ledger, operator_key)
    st = statements_of(ledger, 1)["c1"]
    assert list(st) == sorted(st)  # stored as canonical JSON
    assert st["format"] == "edvex.statement/1" and st["currency"] == "USD"
    assert st["cycle"] == {"from_seq": 1, "to_seq": st["checkpoint"]["size"]}
    assert st["checkpoint"]["root"] == ledger.root_at(st["checkpoint"]["size"]).hex()
    assert st["signature"]["key"] == operator_key.public_hex
    verified = verify_statement(st, operator_key.public_hex, ledger)
    assert verified.checked_against_log


def _deployer_market(m: Market, **terms: Any) -> str:
    m.party("dev", "developer")
    m.party("shop", "deployer")
    m.do("dev", "register_asset", "model", "model")
    return str(m.do("dev", "grant_consent", "model", "shop", ["infer"], grant="g", **terms))


@pytest.mark.parametrize(
    ("terms", "uses", "fee"),
    [
        pytest.param({"per_unit": "0.002"}, [(1500, None)], 3_000_000, id="per-unit"),
        pytest.param(
            {"tiers": [(1000, "0.002"), (None, "0.001")]}, [(700, None), (800, None)], 2_500_000,
            id="tiers-cumulative-across-events",
        ),
        pytest.param(
            {"tiers": [(1000, "0.002"), (None, "0.001")], "minimum": "5.00"}, [(1500, None)],
            5_000_000, id="minimum-raises-a-lower-fee",
        ),
        pytest.param(
            {"tiers": [(10, "1"), (20, "0.5"), (None, "0.25")], "minimum": "1.00"}, [(40, None)],
            20_000_000, id="tiers-above-the-minimum",
        ),
        pytest.param({"share": "0.1"}, [(1, "12.34"), (1, "0.01")], 1_235_000, id="revenue-share"),
        pytest.param(
            {"share": "0.3333333", "per_unit": "0.0000005"}, [(3, "0.10")], 33_334,
            id="floored-once-per-posting",
        ),
    ],
)  # fmt: skip
def test_usage_fees(
    ledger: Ledger, operator_key: KeyPair, terms: dict[str, Any], uses: list[Any], fee: int
) -> None:
    m = Market(ledger)
    _deployer_market(m, **terms)
    for units, revenue in uses:
        m.do("shop", "record_usage", "model", units, revenue)
    settle(ledger, operator_key)
    sts = statements_of(ledger, 1)
    assert [line["amount"] for line in lines(sts["shop"], "fee_out")] == [fee]
    assert lines(sts["dev"], "fee_in")[0]["units"] == sum(u for u, _ in uses)
    assert sts["dev"]["totals"]["retained"] == fee


def test_minimum_owed_without_usage_while_live(ledger: Ledger, operator_key: KeyPair) -> None:
    m = Market(ledger)
    _deployer_market(m, per_unit="0.01", minimum="2.50")
    m.party("late", "creator")  # a point of the log after the grant: it is live there
    settle(ledger, operator_key)
    shop = statements_of(ledger, 1)["shop"]
    assert lines(shop, "fee_out") == [
        {"kind": "fee_out", "asset": "model", "counterparty": "dev", "via": "model",
         "units": 0, "grant": "g", "amount": 2_500_000}
    ]  # fmt: skip


def test_minimum_not_owed_after_revocation_in_an_earlier_cycle(
    ledger: Ledger, operator_key: KeyPair
) -> None:
    m = Market(ledger)
    _deployer_market(m, per_unit="0.01", minimum="2.50")
    m.do("dev", "revoke_consent", "g")
    settle(ledger, operator_key)  # run 1: the grant was live for part of it
    m.party("other", "creator")  # something new, so run 2 happens
    result = settle(ledger, operator_key)
    assert result.run == 2
    assert "shop" not in statements_of(ledger, 2)


def test_minimum_not_owed_outside_validity_window(ledger: Ledger, operator_key: KeyPair) -> None:
    m = Market(ledger)
    _deployer_market(m, per_unit="0.01", minimum="2.50", valid_from=ts(days=30))
    settle(ledger, operator_key)
    assert "shop" not in statements_of(ledger, 1)


def test_nothing_to_settle_then_late_events_land_in_next_cycle(
    ledger: Ledger, operator_key: KeyPair
) -> None:
    m = Market(ledger)
    worked_example(m)
    first = settle(ledger, operator_key)
    again = settle(ledger, operator_key)
    assert again.run is None and again.statements == 0 and again.cut == first.cut + 1
    m.do("dev", "record_usage", "M", 1, "10.00")
    second = settle(ledger, operator_key)
    assert second.run == 2
    dev = statements_of(ledger, 2)["dev"]
    assert dev["cycle"]["from_seq"] == first.cut + 1
    assert lines(dev, "revenue")[0]["amount"] == 10_000_000


def test_recomputation_is_byte_identical(ledger: Ledger, operator_key: KeyPair) -> None:
    worked_example(Market(ledger))
    settle(ledger, operator_key)
    stored = statements_of(ledger, 1)
    _, unsigned = compute_cycle(ledger, 1, 0, stored["c1"]["cycle"]["to_seq"])
    assert {s["party"]: unsigned_bytes(s) for s in unsigned} == {
        p: unsigned_bytes(s) for p, s in stored.items()
    }
    assert verify_run(ledger, 1, operator_key.public_hex, list(stored.values())) == 4


def test_same_log_settles_identically_on_both_backends(
    ledger: Ledger, operator_key: KeyPair, tmp_path: Any
) -> None:
    """The log restored from its export into another database settles to the same bytes."""
    m = Market(ledger)
    worked_example(m)
    m.party("shop", "deployer")
    m.do("dev", "grant_consent", "M", "shop", ["infer"], grant="g-shop", share="0.2",
         tiers=[(5, "0.1"), (None, "0.05")], minimum="0.40")  # fmt: skip
    m.do("shop", "record_usage", "M", 7, "3.00")
    settle(ledger, operator_key)
    copy = Ledger.open(f"sqlite:///{tmp_path / 'copy.db'}")
    copy.restore(list(ledger.records()), "USD")
    cut = statements_of(ledger, 1)["c1"]["cycle"]["to_seq"]
    _, unsigned = compute_cycle(copy, 1, 0, cut)
    stored = statements_of(ledger, 1)
    assert {s["party"]: unsigned_bytes(s) for s in unsigned} == {
        p: unsigned_bytes(s) for p, s in stored.items()
    }
    copy.close()


def test_two_runs_at_once_never_settle_twice(db_url: str, ledger: Ledger,
                                             operator_key: KeyPair) -> None:  # fmt: skip
    worked_example(Market(ledger))
    outcomes: list[Any] = []
    ledgers = [Ledger.open(db_url) for _ in range(3)]
    barrier = threading.Barrier(len(ledgers))

    def go(led: Ledger) -> None:
        barrier.wait()
        try:
            outcomes.append(settle(led, operator_key).run)
        except SettlementConflict as e:
            outcomes.append(e)

    threads = [threading.Thread(target=go, args=(led,)) for led in ledgers]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for led in ledgers:
        led.close()
    assert outcomes.count(1) == 1, outcomes
    assert all(o == 1 or o is None or isinstance(o, SettlementConflict) for o in outcomes)
    with ledger.engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(sschema.runs)).scalar_one() == 1
    closed = list(ledger.events_of(["settlement.closed"], ledger.head().size))
    assert len(closed) == 1


def test_crash_mid_run_leaves_nothing(ledger: Ledger, operator_key: KeyPair,
                                      monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    worked_example(Market(ledger))
    size = ledger.head().size
    real = settlement_run._record_run

    def crash(*args: Any, **kwargs: Any) -> None:
        real(*args, **kwargs)  # statements and postings are written, then the process dies
        raise RuntimeError("simulated crash")

    monkeypatch.setattr(settlement_run, "_record_run", crash)
    with pytest.raises(RuntimeError):
        settle(ledger, operator_key)
    assert ledger.head().size == size
    assert settlement_run.list_statements(ledger) == []
    assert settlement_run.last_run(ledger) == (0, 0)
    monkeypatch.setattr(settlement_run, "_record_run", real)
    result = settle(ledger, operator_key)
    assert result.run == 1 and result.statements == 4


def test_statement_bytes_are_canonical(ledger: Ledger, operator_key: KeyPair) -> None:
    worked_example(Market(ledger))
    settle(ledger, operator_key)
    st = statements_of(ledger, 1)["agg"]
    raw = statement_bytes(st)
    assert b" " not in raw.replace(b'"', b"")
    assert raw.index(b'"checkpoint"') < raw.index(b'"cycle"') < raw.index(b'"format"')
