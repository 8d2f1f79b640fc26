"""Guarantee 6 of issue 5: bad input changes nothing (DESIGN.md, "Bad input").

Hypothesis generates malformed events and files and sends them through the three ways in:

* the SDK's typed methods (`record_usage`, `grant_consent`, `derive`, `register_asset`,
  `revoke_consent`, `register_party`), each call a valid one with one to three arguments replaced
  by a bad value: wrong types, floats, negative, huge and over-precise amounts, exponents, unknown
  kinds, purposes, assets, parties and grants, empty and oversized text, control characters,
  lone surrogates (what invalid UTF-8 becomes in a Python string), zero, negative and duplicate
  parents, absurd and zone-less timestamps, oversized and deeply nested metadata;
* `Client.submit(dict)`, a valid event dict of each kind with one path replaced, removed or
  added (an unknown field);
* `edvex usage import FILE` (CliRunner), JSONL and CSV files with one bad line among good ones,
  a bad CSV header, or bytes that are not UTF-8.

Every attempt must be refused: from the SDK with a `LedgerError` whose message is one line naming
the field (or rule), from the CLI with exit status 2 and exactly one line on stderr, never a
traceback; and every table of the log, its projections and settlement must hold the same rows
before and after. Problems are collected rather than raised, so one run reports every kind of
input that got through, not only the first. Hypothesis runs derandomised (the same examples on
every run; CI stays reproducible).

Out of scope: a call whose Python shape is wrong (`purposes=5`, `parents=None`, a parent tuple of
two, `submit([...])`) raises Python's own TypeError/IndexError/AttributeError, as typed Python
APIs do; the values inside the shapes are what is generated here. Named cases for the rules are in
`tests/test_rules.py`, for the models in its `MODEL_CASES`, for the CLI in `tests/test_cli.py` and
`tests/test_import.py`.
"""

from __future__ import annotations

import copy
import functools
import json
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from figures import FIGURES
from helpers import Market
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select

from cli.main import cli
from ledger import Client, KeyPair, Ledger, LedgerError, write_key
from ledger import schema as s
from settlement import schema as settlement_schema
from settlement.run import settle

MAX_MICROS = 2**53 - 1
SDK_EXAMPLES = 150
SUBMIT_EXAMPLES = 150
IMPORT_EXAMPLES = 100
NOW = "2026-11-28T17:23:05.123456Z"
HYPOTHESIS = settings(
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# --- the market and its snapshot ------------------------------------------------------------------


def market(ledger: Ledger, operator: KeyPair) -> Market:
    """c1 owns item-1 and grants dep (use) and agg (derive); dep owns dep-model; one settled run,
    so that settlement's tables hold rows too."""
    m = Market(ledger)
    for name, kind in (("c1", "creator"), ("agg", "aggregator"), ("dep", "deployer")):
        m.party(name, kind)
    m.do("c1", "register_asset", "item-1", "data")
    m.do("c1", "grant_consent", "item-1", "dep", ["infer"], per_unit="0.001", grant="g-dep")
    m.do("c1", "grant_consent", "item-1", "agg", ["derive"], share="0.5", grant="g-agg")
    m.do("c1", "grant_consent", "item-1", "dep", ["derive"], share="0.5", grant="g-dep-derive")
    m.do("dep", "register_asset", "dep-model", "model")
    m.do("dep", "grant_consent", "dep-model", "c1", ["infer"], per_unit="0.01", grant="g-c1")
    m.do("dep", "record_usage", "item-1", 10, "2.50")
    settle(ledger, operator)
    return m


def snapshot(ledger: Ledger) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table of the ledger and of settlement, ordered by primary key."""
    tables = [*s.metadata.sorted_tables]
    if inspect(ledger.engine).has_table("runs"):
        tables += settlement_schema.metadata.sorted_tables
    with ledger.engine.connect() as conn:
        return {
            t.name: [tuple(r) for r in conn.execute(select(t).order_by(*t.primary_key.columns))]
            for t in tables
        }


@dataclass
class Outcomes:
    """What happened to each attempt, by the kind of attempt."""

    tried: Counter[str] = field(default_factory=Counter)
    problems: dict[str, list[str]] = field(default_factory=dict)
    failed: set[int] = field(default_factory=set)  # the attempts with any problem

    def problem(self, kind: str, detail: str) -> None:
        self.problems.setdefault(kind, []).append(detail)
        self.failed.add(sum(self.tried.values()))

    def report(self) -> str:
        return "\n".join(
            f"{kind}: {len(details)} example(s), e.g. {details[0]}"
            for kind, details in sorted(self.problems.items())
        )


def one_line(message: str) -> bool:
    return bool(message.strip()) and "\n" not in message.strip() and "\r" not in message


# --- bad values, by the kind of field -------------------------------------------------------------

CONTROL = st.characters(
    categories=["Cc", "Cf", "Cs", "Co", "Zl", "Zp", "Zs"], exclude_characters=" "
)
NOT_TEXT = st.one_of(
    st.integers(),
    st.floats(allow_nan=True),
    st.booleans(),
    st.binary(max_size=4),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=2), st.integers(), max_size=1),
)
WITH_CONTROL = st.tuples(st.text(max_size=6), CONTROL, st.text(max_size=6)).map("".join)
LONE_SURROGATE = st.sampled_from(["\udc80", "item-\udcff", "\ud800x", "a\udfff"])


def bad_identifier(limit: int = 128) -> st.SearchStrategy[Any]:
    """Never a valid identifier: empty, too long, unprintable, not text."""
    return st.one_of(
        st.just(""),
        st.text(alphabet="abcxyz-_.0123456789", min_size=limit + 1, max_size=limit + 40),
        WITH_CONTROL,
        LONE_SURROGATE,
        st.sampled_from(["a\nb", "a\tb", "\x1b[31mred", "zero\u200bwidth", "line\u2028sep"]),
        NOT_TEXT,
    )


def unknown(name: str) -> st.SearchStrategy[str]:
    """A well-formed id that names nothing in the market: a rule, not the model, refuses it."""
    return st.text(alphabet="abcdefgh", min_size=1, max_size=8).map(lambda x: f"no-{name}-{x}")


OVERPRECISE = st.tuples(st.integers(0, 10**6), st.integers(1, 9), st.integers(0, 6)).map(
    lambda t: f"{t[0]}.{'0' * (6 + t[2])}{t[1]}"
)
TOO_BIG = st.integers(MAX_MICROS + 1, 10**30).map(lambda n: f"{n // 10**6}.{n % 10**6:06d}")
SIGNED = st.decimals(min_value=Decimal("-1e9"), max_value=Decimal("-0.000001"), places=6).map(str)
EXPONENT = st.tuples(st.integers(1, 9), st.integers(-9, 9)).map(lambda t: f"{t[0]}e{t[1]}")
MALFORMED_DECIMAL = st.sampled_from(
    ["", " 1", "1 ", "1,5", "1.", ".5", "+1", "0x10", "NaN", "Infinity", "1.2.3", "١٢", "١.٥"]
)


def bad_amount() -> st.SearchStrategy[Any]:
    """Never a valid SDK amount (an int there is whole currency units)."""
    return st.one_of(
        st.floats(allow_nan=True),
        st.booleans(),
        OVERPRECISE,
        TOO_BIG,
        SIGNED,
        EXPONENT,
        MALFORMED_DECIMAL,
        st.integers(max_value=-1),
        st.integers(min_value=MAX_MICROS // 10**6 + 1),
        st.sampled_from([Decimal("NaN"), Decimal("-1"), Decimal("Infinity"), [1], {"a": 1}]),
    )


def bad_rate(share: bool = False) -> st.SearchStrategy[Any]:
    above = st.decimals(min_value=Decimal("1.000001"), max_value=Decimal(10**6), places=6)
    return st.one_of(
        st.floats(allow_nan=True),
        st.booleans(),
        SIGNED,
        EXPONENT,
        MALFORMED_DECIMAL,
        st.text(alphabet="123456789", min_size=41, max_size=60),
        st.integers(max_value=-1),
        *([above.map(str)] if share else []),
    )


def bad_units() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.integers(max_value=-1),
        st.integers(min_value=MAX_MICROS + 1),
        st.floats(allow_nan=True),
        st.booleans(),
        st.text(max_size=4),
        st.none(),
        st.just(Decimal(3)),
    )


def bad_timestamp() -> st.SearchStrategy[Any]:
    """Out of 1970..2199, no time zone, impossible dates, not a timestamp at all."""
    early = st.datetimes(max_value=datetime(1969, 12, 31), timezones=st.just(UTC))
    late = st.datetimes(min_value=datetime(2200, 1, 1), timezones=st.just(UTC))
    naive = st.datetimes(min_value=datetime(1971, 1, 1), max_value=datetime(2198, 1, 1))
    return st.one_of(
        early.map(datetime.isoformat),
        late.map(datetime.isoformat),
        early,
        naive,
        naive.map(datetime.isoformat),
        st.text(max_size=20).map(lambda x: "x" + x),
        st.sampled_from(
            [
                "",
                "2026-02-30T00:00:00Z",
                "2026-13-01T00:00:00Z",
                "yesterday",
                "2026-11-28 25:00:00Z",
                "1e9",
                "9999-12-31T23:59:59.999999Z",
            ]
        ),
        st.integers(),
        st.floats(),
    )


def deep(levels: int, leaf: Any, as_list: bool) -> Any:
    return functools.reduce(lambda a, _: [a] if as_list else {"k": a}, range(levels), leaf)


def bad_metadata() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.dictionaries(st.text(max_size=3), st.floats(allow_nan=True), min_size=1, max_size=2),
        st.sampled_from(
            [
                {1: "int key"},
                {"a": {1, 2}},
                {"a": b"bytes"},
                {"a": 2**60},
                {"a": -(2**60)},
                {"a": "\ud800"},
                {"a": ["x", 1.5]},
                "not an object",
                [1, 2],
                {"big": "x" * 17_000},
                {"a": Decimal("1.5")},
                {"a": datetime(2026, 1, 1)},
            ]
        ),
        st.integers(600, 1200).map(lambda n: {"deep": deep(n, 1, as_list=True)}),
        st.integers(1100, 3000).map(lambda n: {"deep": deep(n, 1, as_list=False)}),
    )


def bad_purposes() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just([]),
        st.lists(st.sampled_from(["sell", "INFER", "", "infer ", "use"]), min_size=1, max_size=3),
        st.sampled_from(
            [["infer", "infer"], ["train", "train", "derive"], [5], [None], ["infer", 1.5], "infer"]
        ),
    )


def bad_tiers() -> st.SearchStrategy[Any]:
    return st.sampled_from(
        [
            [(0, "0.1"), (None, "0.2")],
            [(10, "0.1"), (5, "0.2"), (None, "0.3")],
            [(10, "0.1"), (10, "0.2"), (None, "0.3")],
            [(10, "0.1")],
            [(None, "0.1"), (None, "0.2")],
            [(10, 0.1), (None, "0.2")],
            [(10, "0.1"), (None, "-0.2")],
            [(-1, "0.1"), (None, "0.2")],
            [(10.5, "0.1"), (None, "0.2")],
            [("10", "0.1"), (None, "0.2")],
            [(MAX_MICROS + 1, "0.1"), (None, "0.2")],
            [(10, "1e-3"), (None, "0.2")],
        ]
    )


def bad_kind() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.sampled_from(["widget", "", "Data", "dataset ", "operator"]), NOT_TEXT, WITH_CONTROL
    )


def bad_parents() -> st.SearchStrategy[Any]:
    ok = ("item-1", "3", "g-agg")
    return st.one_of(
        st.just([]),
        bad_rate().map(lambda w: [("item-1", w, "g-agg")]),
        st.sampled_from(["0", "0.000", 0]).map(lambda w: [("item-1", w, "g-agg")]),
        st.just([ok, ("item-1", "1", "g-agg")]),
        st.just([("D-new", "1", "g-agg")]),
        bad_identifier().map(lambda a: [(a, "1", "g-agg")]),
        bad_identifier().map(lambda g: [("item-1", "1", g)]),
        unknown("asset").map(lambda a: [(a, "1", "g-agg")]),
        unknown("grant").map(lambda g: [("item-1", "1", g)]),
        st.just([("item-1", "1", "g-dep")]),  # a grant that names another party
        st.just([("item-1", "1", "g-dep-derive")]),
        st.just([{"asset": "item-1", "weight": "1", "grant": "g-agg", "extra": 1}]),
        st.just([{"asset": "item-1", "grant": "g-agg"}]),
    )


def bad_hash() -> st.SearchStrategy[Any]:
    return st.one_of(
        st.text(alphabet="0123456789abcdef", max_size=63),
        st.text(alphabet="0123456789abcdef", min_size=65, max_size=80),
        st.just("A" * 64),
        st.just("g" * 64),
        NOT_TEXT,
    )


def bad_text(limit: int) -> st.SearchStrategy[Any]:
    return st.one_of(
        st.just(""),
        st.text(alphabet="abc", min_size=limit + 1, max_size=limit + 20),
        WITH_CONTROL,
        LONE_SURROGATE,
        NOT_TEXT,
    )


# --- SDK calls ------------------------------------------------------------------------------------

Call = tuple[str, str, dict[str, Any]]  # (party, method, kwargs)

# Each method with a valid call, and the bad values each argument may take instead.
SDK: dict[str, tuple[str, dict[str, Any], dict[str, st.SearchStrategy[Any]]]] = {
    "record_usage": (
        "dep",
        {"asset": "item-1", "units": 3, "revenue": "0.35"},
        {
            "asset": st.one_of(bad_identifier(), unknown("asset")),
            "units": bad_units(),
            "revenue": bad_amount(),
            "grant": st.one_of(bad_identifier(), unknown("grant"), st.just("g-agg")),
            "id": bad_identifier(),
        },
    ),
    "grant_consent": (
        "c1",
        {
            "asset": "item-1",
            "grantee": "dep",
            "purposes": ["infer"],
            "per_unit": "0.001",
            "share": "0.1",
            "minimum": "1.00",
        },
        {
            "asset": st.one_of(bad_identifier(), unknown("asset"), st.just("dep-model")),
            "grantee": st.one_of(bad_identifier(), unknown("party")),
            "purposes": bad_purposes(),
            "share": bad_rate(share=True),
            "per_unit": bad_rate(),
            "tiers": bad_tiers(),
            "minimum": bad_amount(),
            "valid_from": bad_timestamp(),
            "valid_until": st.one_of(bad_timestamp(), st.just("2001-01-01T00:00:00.000000Z")),
            "grant": st.one_of(bad_identifier(), st.just("g-dep")),
            "id": bad_identifier(),
        },
    ),
    "derive": (
        "agg",
        {
            "asset": "D-new",
            "kind": "dataset",
            "purpose": "derive",
            "parents": [("item-1", "3", "g-agg")],
        },
        {
            "asset": st.one_of(bad_identifier(), st.just("item-1")),
            "kind": bad_kind(),
            "purpose": st.one_of(st.sampled_from(["infer", "generate", "sell", ""]), NOT_TEXT),
            "parents": bad_parents(),
            "content_hash": bad_hash(),
            "uri": bad_text(2048),
            "metadata": bad_metadata(),
            "id": bad_identifier(),
        },
    ),
    "register_asset": (
        "c1",
        {"asset": "item-new", "kind": "data"},
        {
            "asset": st.one_of(bad_identifier(), st.just("item-1"), st.just("dep-model")),
            "kind": bad_kind(),
            "content_hash": bad_hash(),
            "uri": bad_text(2048),
            "metadata": bad_metadata(),
            "id": bad_identifier(),
        },
    ),
    "revoke_consent": (
        "c1",
        {"grant": "g-dep"},
        {
            "grant": st.one_of(bad_identifier(), unknown("grant"), st.just("g-c1")),
        },
    ),
    "register_party": (
        "agg",
        {"kind": "aggregator", "name": "Agg"},
        {
            "kind": bad_kind(),
            "name": bad_text(256),
            "id": bad_identifier(),
        },
    ),
}


@st.composite
def sdk_calls(draw: st.DrawFn) -> Call:
    method = draw(st.sampled_from(sorted(SDK)))
    party, valid, bad = SDK[method]
    names = draw(st.lists(st.sampled_from(sorted(bad)), min_size=1, max_size=3, unique=True))
    kwargs = dict(valid)
    for name in names:
        kwargs[name] = draw(bad[name])
    if "tiers" in names:
        kwargs.pop("per_unit", None)  # tiers replace per_unit; the tiers alone must be wrong
    return party, method, kwargs


def call(m: Market, party: str, method: str, kwargs: dict[str, Any]) -> None:
    kwargs = dict(kwargs)
    with Client(m.ledger, party, m.keys[party], batch_size=1, max_delay=0) as client:
        if method == "register_party":
            getattr(client, method)(kwargs.pop("kind"), **kwargs)
        elif method == "revoke_consent":
            getattr(client, method)(kwargs.pop("grant"), **kwargs)
        else:
            getattr(client, method)(**kwargs)


def short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 90 else text[:87] + "..."


def attempt(
    out: Outcomes, ledger: Ledger, kind: str, label: str, action: Callable[[], None]
) -> None:
    """Run one bad attempt; record whatever breaks the guarantee."""
    out.tried[kind] += 1
    before = snapshot(ledger)
    try:
        action()
        out.problem(f"{kind}: accepted", label)
    except LedgerError as e:
        if not one_line(str(e)):
            out.problem(f"{kind}: message not one line", f"{label} -> {str(e)!r}")
        elif not ("field" in str(e) or "rule" in str(e)):
            out.problem(f"{kind}: message names no field", f"{label} -> {e}")
    except Exception as e:  # noqa: BLE001 - this is what the test looks for
        out.problem(f"{kind}: {type(e).__name__} instead of a LedgerError", label)
    if snapshot(ledger) != before:
        out.problem(f"{kind}: the database changed", label)


def test_sdk_methods_refuse_bad_values(ledger: Ledger, operator_key: KeyPair) -> None:
    m = market(ledger, operator_key)
    out = Outcomes()

    @settings(HYPOTHESIS, max_examples=SDK_EXAMPLES)
    @given(sdk_calls())
    def one(c: Call) -> None:
        party, method, kwargs = c
        label = f"{method}({', '.join(f'{k}={short(v)}' for k, v in kwargs.items())})"
        attempt(out, ledger, f"SDK {method}", label, lambda: call(m, party, method, kwargs))

    one()
    record(out, ledger, "SDK typed methods")
    assert not out.problems, out.report()


# --- Client.submit(dict) --------------------------------------------------------------------------

# Events that dep may submit as they are; each example breaks one of them.
EVENTS: dict[str, dict[str, Any]] = {
    "usage": {
        "type": "usage.recorded",
        "body": {"asset": "item-1", "units": 3, "revenue": "1.25", "grant": "g-dep"},
    },
    "asset": {
        "type": "asset.registered",
        "body": {
            "asset": "dep-new",
            "kind": "model",
            "uri": "https://example.org/m",
            "content_hash": "ab" * 32,
            "metadata": {"layers": 12},
        },
    },
    "grant": {
        "type": "consent.granted",
        "body": {
            "grant": "g-new",
            "asset": "dep-model",
            "grantee": "c1",
            "purposes": ["infer"],
            "valid_from": NOW,
            "terms": {
                "share": "0.1",
                "minimum": "5",
                "tiers": [{"up_to": 100, "per_unit": "0.01"}, {"up_to": None, "per_unit": "0.005"}],
            },
        },
    },
    "revoke": {"type": "consent.revoked", "body": {"grant": "g-c1"}},
    "derive": {
        "type": "asset.derived",
        "body": {
            "asset": "dep-derived",
            "kind": "model",
            "purpose": "derive",
            "parents": [{"asset": "item-1", "weight": "2", "grant": "g-dep-derive"}],
        },
    },
}

# The bad values each path may take (paths into the event dict, dotted).
PATHS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.one_of(
        st.sampled_from(["usage.deleted", "", "Usage.Recorded", "party.updated"]),
        NOT_TEXT,
        WITH_CONTROL,
    ),
    "id": bad_identifier(),
    "occurred_at": bad_timestamp(),
    "body": st.one_of(st.just(None), st.just([]), st.text(max_size=5), st.integers()),
    "body.asset": st.one_of(bad_identifier(), unknown("asset")),
    "body.units": bad_units(),
    "body.revenue": st.one_of(bad_amount(), st.integers(min_value=MAX_MICROS + 1)),
    "body.grant": st.one_of(bad_identifier(), unknown("grant")),
    "body.kind": bad_kind(),
    "body.uri": bad_text(2048),
    "body.content_hash": bad_hash(),
    "body.metadata": bad_metadata(),
    "body.grantee": st.one_of(bad_identifier(), unknown("party")),
    "body.purposes": bad_purposes(),
    "body.valid_from": bad_timestamp(),
    "body.valid_until": st.one_of(bad_timestamp(), st.just("2001-01-01T00:00:00.000000Z")),
    "body.terms.share": bad_rate(share=True),
    "body.terms.minimum": st.one_of(bad_amount(), st.integers(min_value=MAX_MICROS + 1)),
    "body.terms.tiers": st.one_of(
        bad_tiers().map(lambda ts: [{"up_to": u, "per_unit": p} for u, p in ts]),
        st.sampled_from([[], [{"up_to": None}], [{"per_unit": "0.1"}], "0.1"]),
    ),
    "body.purpose": st.one_of(st.sampled_from(["infer", "generate", "sell", ""]), NOT_TEXT),
    "body.parents": st.one_of(
        bad_parents().map(
            lambda ps: [
                p if isinstance(p, dict) else {"asset": p[0], "weight": p[1], "grant": p[2]}
                for p in ps
            ]
        ),
        st.sampled_from([None, "item-1", [["item-1", "1", "g-dep-derive"]]]),
    ),
}

EXTRA_TOP = st.sampled_from(["actor", "seq", "recorded_at", "hash", "batch", "signature", "note"])


@st.composite
def submissions(draw: st.DrawFn) -> tuple[str, dict[str, Any]]:
    name = draw(st.sampled_from(sorted(EVENTS)))
    event = copy.deepcopy(EVENTS[name])
    paths = [p for p in PATHS if p.count(".") == 0 or _has(event, p)]
    how = draw(
        st.sampled_from(["replace", "replace", "replace", "remove", "extra-body", "extra-top"])
    )
    if how == "extra-top":
        key = draw(EXTRA_TOP)
        event[key] = "c1" if key == "actor" else draw(st.one_of(st.text(max_size=5), st.integers()))
        return f"{name}: unknown top-level field {key!r}={event[key]!r}", event
    if how == "extra-body":
        key = draw(st.text(alphabet="xyz_", min_size=1, max_size=6))
        event["body"][key] = draw(st.one_of(st.text(max_size=3), st.integers()))
        return f"{name}: unknown body field {key!r}", event
    if how == "remove":
        required = [p for p in paths if p.startswith("body.") and p not in OPTIONAL]
        path = draw(st.sampled_from(["type", "body", *required]))
        _remove(event, path)
        return f"{name}: without {path}", event
    path = draw(st.sampled_from(paths))
    value = draw(PATHS[path])
    _set(event, path, value)
    return f"{name}: {path}={short(value)}", event


OPTIONAL = {
    "body.revenue",
    "body.grant",
    "body.uri",
    "body.content_hash",
    "body.metadata",
    "body.valid_until",
    "body.terms.share",
    "body.terms.minimum",
    "body.terms.tiers",
}


def _has(event: dict[str, Any], path: str) -> bool:
    node: Any = event
    for key in path.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


def _set(event: dict[str, Any], path: str, value: Any) -> None:
    *parents, last = path.split(".")
    node = event
    for key in parents:
        node = node[key]
    node[last] = value


def _remove(event: dict[str, Any], path: str) -> None:
    *parents, last = path.split(".")
    node = event
    for key in parents:
        node = node[key]
    del node[last]


def test_submit_refuses_bad_event_dicts(ledger: Ledger, operator_key: KeyPair) -> None:
    m = market(ledger, operator_key)
    out = Outcomes()

    def submit(event: dict[str, Any]) -> None:
        with Client(ledger, "dep", m.keys["dep"], batch_size=1, max_delay=0) as client:
            client.submit(event)

    for name, event in EVENTS.items():  # the templates themselves are valid
        before = ledger.head().size
        submit({**copy.deepcopy(event), "id": f"valid-{name}"})
        assert ledger.head().size == before + 1, name

    @settings(HYPOTHESIS, max_examples=SUBMIT_EXAMPLES)
    @given(submissions())
    def one(case: tuple[str, dict[str, Any]]) -> None:
        label, event = case
        attempt(out, ledger, "Client.submit", label, lambda: submit(event))

    one()
    record(out, ledger, "Client.submit dicts")
    assert not out.problems, out.report()


# --- edvex usage import ---------------------------------------------------------------------------

GOOD_LINES = [
    {"asset": "item-1", "units": 3},
    {"asset": "item-1", "units": 10, "revenue": "0.35"},
    {"asset": "item-1", "units": 0, "revenue": "12"},
    {"asset": "item-1", "units": 7, "grant": "g-dep"},
]


def json_text(value: Any) -> st.SearchStrategy[str]:
    return st.just(json.dumps(value, ensure_ascii=True))


# A bad JSONL line: the text of one line (no newline inside), or bytes.
BAD_FIELD_JSON: dict[str, st.SearchStrategy[str]] = {
    "units": st.one_of(
        st.sampled_from(
            [
                "-1",
                "1.0",
                "1e3",
                "3.5",
                "true",
                '"3"',
                "[3]",
                "NaN",
                "Infinity",
                "99999999999999999999",
                "-0.0",
                "0x10",
                "null",
            ]
        ),
        st.integers(max_value=-1).map(str),
        st.integers(min_value=MAX_MICROS + 1).map(str),
    ),
    "revenue": st.one_of(
        st.sampled_from(
            [
                "1.5",
                "1",
                "-1",
                "true",
                "[]",
                "NaN",
                '"1e3"',
                '"-0.5"',
                '""',
                '"1.0000001"',
                '"12,50"',
                '" 1"',
                '"9007199255.000000"',
            ]
        ),
        OVERPRECISE.map(json.dumps),
        TOO_BIG.map(json.dumps),
    ),
    "asset": st.one_of(
        st.one_of(bad_identifier().filter(lambda v: isinstance(v, str)), unknown("asset")).map(
            json.dumps
        ),
        st.sampled_from(["5", "null", "[]", '"\\ud800"', '"a\\u0000b"']),
    ),
    "id": st.one_of(
        bad_identifier().filter(lambda v: isinstance(v, str)).map(json.dumps),
        st.sampled_from(["5", "[]", '"\\udc80"']),
    ),
    "grant": st.one_of(unknown("grant").map(json.dumps), st.sampled_from(['""', "5", '"g-agg"'])),
}


@st.composite
def bad_jsonl_line(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["field", "field", "field", "structure", "bytes"]))
    if how == "field":
        name = draw(st.sampled_from(sorted(BAD_FIELD_JSON)))
        fields = {"asset": '"item-1"', "units": "3", name: draw(BAD_FIELD_JSON[name])}
        return ("{" + ", ".join(f'"{k}": {v}' for k, v in fields.items()) + "}").encode()
    if how == "bytes":
        junk = draw(st.sampled_from([b"\xff", b"\xc3\x28", b"\xed\xa0\x80", b"\x80abc", b"\xf8"]))
        return b'{"asset": "item-' + junk + b'", "units": 1}'
    return draw(
        st.sampled_from(
            [
                b'{"asset": "item-1", "units": 1, "units": 2}',
                b'{"asset": "item-1", "units": 1, "colour": "red"}',
                b'{"asset": "item-1"}',
                b'{"units": 1}',
                b'{"asset": "item-1", "units": 1,}',
                b'{"asset": "item-1", "units": 1} trailing',
                b'{"asset": "item-1", "units": 1',
                b"[1, 2]",
                b"42",
                b'"item-1"',
                b"null",
                b"{}",
                b'{"asset": "item-\t1", "units": 1}',
                b'{"asset": "item-1", "units": ' + b"[" * 5000 + b"]" * 5000 + b"}",
                b'{"asset": "item-1", "units": 1, "id": "' + b"x" * 129 + b'"}',
                b"\xef\xbb\xbf" + b'{"asset": "item-1", "units": 1}',
            ]
        )
    )


@st.composite
def bad_csv(draw: st.DrawFn) -> bytes:
    how = draw(st.sampled_from(["row", "row", "header", "bytes"]))
    header, rows = "asset,units,revenue,id", ["item-1,3,,", "item-1,10,0.35,"]
    if how == "header":
        header = draw(
            st.sampled_from(
                [
                    "asset",
                    "units",
                    "asset,units,colour",
                    "asset,units,units",
                    "Asset,Units",
                    'asset,units,"re\nvenue"',
                    'asset,units,"col\rour"',
                    "asset;units",
                    "",
                ]
            )
        )
        rows = ["item-1,3"]
    elif how == "row":
        bad = draw(
            st.sampled_from(
                [
                    "item-1,-1,,",
                    "item-1,1.5,,",
                    "item-1,,,",
                    "item-1,²,,",
                    "item-1,1e3,,",
                    "item-1, 3,,",
                    "item-1,3,1e3,",
                    "item-1,3,-1,",
                    "item-1,3,0.0000001,",
                    "item-1,99999999999999999999,,",
                    "nope,3,,",
                    ",3,,",
                    "item-1,3",
                    "item-1,3,,,x",
                    "item\x01,3,,",
                    '"item\n1",3,,',
                    "item-1,3,,\x00",
                    "item-1,3,1.2.3,",
                    "item-1,3,,\u2028",
                    "item-1,3,9007199255,",
                ]
            )
        )
        rows.insert(draw(st.integers(0, len(rows))), bad)
    else:
        return (b"asset,units\nitem-1,3\n") + b"item-\xff,1\n"
    return (header + "\n" + "\n".join(rows) + "\n").encode("utf-8")


@st.composite
def bad_files(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.booleans()):
        return ".csv", draw(bad_csv())
    good = [
        json.dumps(line).encode()
        for line in draw(st.lists(st.sampled_from(GOOD_LINES), max_size=4))
    ]
    at = draw(st.integers(0, len(good)))
    lines = [*good[:at], draw(bad_jsonl_line()), *good[at:]]
    return ".jsonl", b"\n".join(lines) + b"\n"


def test_usage_import_refuses_bad_files(
    ledger: Ledger, operator_key: KeyPair, db_url: str, tmp_path: Path
) -> None:
    m = market(ledger, operator_key)
    keys = tmp_path / "keys"
    for name, key in m.keys.items():
        write_key(keys / f"{name}.key", key)
    out = Outcomes()
    runner = CliRunner()

    def run(path: Path) -> None:
        result = runner.invoke(
            cli, ["--db", db_url, "--keys", str(keys), "usage", "import", str(path), "--by", "dep"]
        )
        if result.exception is not None and not isinstance(result.exception, SystemExit):
            raise result.exception
        if result.exit_code == 0:
            raise AssertionError("accepted")
        lines = result.stderr.splitlines()
        if result.exit_code != 2 or len(lines) != 1 or not lines[0].startswith("edvex: "):
            raise BadExit(result.exit_code, result.stderr)

    @settings(HYPOTHESIS, max_examples=IMPORT_EXAMPLES)
    @given(bad_files())
    def one(case: tuple[str, bytes]) -> None:
        suffix, content = case
        path = tmp_path / f"usage{suffix}"
        path.write_bytes(content)
        label = f"{suffix} {short(content)}"
        attempt_cli(out, ledger, label, lambda: run(path))

    one()
    record(out, ledger, "`edvex usage import` files")
    assert not out.problems, out.report()


class BadExit(Exception):
    def __init__(self, code: int, stderr: str) -> None:
        super().__init__(f"exit {code}, stderr {stderr!r}")


def attempt_cli(out: Outcomes, ledger: Ledger, label: str, action: Callable[[], None]) -> None:
    kind = "edvex usage import"
    out.tried[kind] += 1
    before = snapshot(ledger)
    try:
        action()
    except AssertionError:
        out.problem(f"{kind}: accepted (exit 0)", label)
    except BadExit as e:
        out.problem(f"{kind}: not exit 2 with one stderr line", f"{label} -> {e}")
    except Exception as e:  # noqa: BLE001 - this is what the test looks for
        out.problem(f"{kind}: traceback ({type(e).__name__}: {e})", label)
    if snapshot(ledger) != before:
        out.problem(f"{kind}: the database changed", label)


def record(out: Outcomes, ledger: Ledger, what: str) -> None:
    tried = sum(out.tried.values())
    FIGURES.append(
        f"bad inputs tried {tried} ({what}, {ledger.dialect}): "
        + (
            "every one refused in one line, nothing changed"
            if not out.failed
            else f"{tried - len(out.failed)} refused cleanly, {len(out.failed)} not "
            f"({'; '.join(sorted(out.problems))})"
        )
    )


@pytest.mark.parametrize(
    ("method", "kwargs"),
    [
        pytest.param(
            "submit",
            {"type": "usage.recorded", "occurred_at": "", "body": {"asset": "item-1", "units": 1}},
            id="submit-empty-occurred-at",
        ),
        pytest.param(
            "submit",
            {"type": "usage.recorded", "actor": "c1", "body": {"asset": "item-1", "units": 1}},
            id="submit-naming-another-actor",
        ),
        pytest.param(
            "grant_consent",
            {
                "asset": "dep-model",
                "grantee": "c1",
                "purposes": ["infer"],
                "per_unit": "0.1",
                "grant": "",
            },
            id="grant-with-empty-grant-id",
        ),
        pytest.param(
            "grant_consent",
            {
                "asset": "dep-model",
                "grantee": "c1",
                "purposes": ["infer"],
                "per_unit": "0.1",
                "valid_from": "",
            },
            id="grant-with-empty-valid-from",
        ),
        pytest.param(
            "register_asset",
            {"asset": "deep", "kind": "data", "metadata": {"deep": deep(600, 1, as_list=True)}},
            id="metadata-nested-600-deep",
        ),
    ],
)
def test_named_bad_inputs_are_refused(
    ledger: Ledger, operator_key: KeyPair, method: str, kwargs: dict[str, Any]
) -> None:
    """The kinds of input the property tests found getting through, as named cases."""
    m = market(ledger, operator_key)
    before = snapshot(ledger)
    client = Client(ledger, "dep", m.keys["dep"], batch_size=1, max_delay=0)
    with client, pytest.raises(LedgerError):
        if method == "submit":
            client.submit(kwargs)
        else:
            getattr(client, method)(**kwargs)
    assert snapshot(ledger) == before
