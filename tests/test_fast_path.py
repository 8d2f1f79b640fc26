"""The SDK's hot path for usage events agrees with `parse_event` on every input."""

from __future__ import annotations

import copy
from functools import partial
from typing import Any

import rfc8785
from helpers import outcome, usage_dict
from hypothesis import given, settings
from hypothesis import strategies as st

from ledger.canonical import PLAIN_HEAD, event_parts, plain, recorded_at_member
from ledger.events import (
    UsageMaker,
    body_dict,
    encode,
    encode_all,
    parse_event,
    signed_bytes,
    usage_event,
)

texts = st.one_of(
    st.text(min_size=0, max_size=140),
    st.sampled_from(["model-1", "m", "x" * 128, "x" * 129, "a\nb", "caf\u00e9", "cafe\u0301", "*"]),
)
numbers = st.one_of(
    st.integers(-5, 2**53 + 5),
    st.booleans(),
    st.floats(allow_nan=False),
    st.none(),
    st.text(max_size=5),
)
timestamps = st.sampled_from([
    "2026-11-28T17:23:05.123456Z", "2026-11-28T17:23:05Z", "2026-02-30T00:00:00.000000Z",
    "1969-12-31T23:59:59.999999Z", "2026-11-28T17:23:05.123456+01:00", "yesterday", "",
])  # fmt: skip


@settings(max_examples=1500, deadline=None)
@given(texts, texts, timestamps, texts, numbers, st.one_of(st.none(), st.integers(0, 10**12)),
       st.one_of(st.none(), texts))  # fmt: skip
def test_usage_fast_path_agrees_with_the_models(
    event_id: str, actor: str, occurred_at: str, asset: str, units: Any, revenue: Any, grant: Any
) -> None:
    event = usage_dict(event_id, actor, occurred_at, asset, units, revenue, grant)
    slow = outcome(lambda: parse_event(event))
    fast = outcome(lambda: usage_event(event_id, actor, occurred_at, asset, units, revenue, grant))
    maker = UsageMaker(actor)  # the SDK's maker, asked twice: the second answer is remembered
    made = [outcome(lambda: maker(event_id, occurred_at, asset, units, revenue, grant))
            for _ in range(2)]  # fmt: skip
    if isinstance(slow, tuple) or isinstance(fast, tuple):
        assert isinstance(slow, tuple) and isinstance(fast, tuple), (slow, fast)
        assert made == [fast, fast]
        return
    assert fast == slow
    assert made == [slow, slow]
    assert signed_bytes(fast) == signed_bytes(slow)
    # the templated encoding of the append path is the reference encoding, to the byte
    signed = {"id": slow.id, "type": slow.type, "actor": slow.actor,
              "occurred_at": slow.occurred_at, "body": body_dict(slow)}  # fmt: skip
    reference = rfc8785.dumps(signed)
    raw_body, head, tail = encode(fast)
    assert raw_body == rfc8785.dumps(body_dict(slow))
    assert head + tail == reference
    recorded_at = "2026-11-29T07:00:00.000001Z"
    leaf = rfc8785.dumps({**orjson_loads(reference), "recorded_at": recorded_at})
    assert head + recorded_at_member(recorded_at) + tail == leaf
    if plain(slow.id) and plain(slow.actor):  # the verify loop's template, where it applies
        text_head = PLAIN_HEAD % (slow.actor, raw_body.decode(), slow.id, slow.occurred_at)
        assert text_head.encode() == head


# values that compare and hash equal but are not the same to the models: 1 and True, 1 and 1.0,
# a name in composed and decomposed form
# (few values, so that runs repeat them)
alike = st.sampled_from([1, True, 1.0, "1"])
maybe_alike = st.sampled_from([None, 1, True])
names = st.sampled_from(["model-1", "caf\u00e9", "cafe\u0301"])


@settings(max_examples=400, deadline=None)
@given(st.lists(st.tuples(names, alike, maybe_alike, st.one_of(st.none(), names)), max_size=16))
def test_a_maker_remembering_bodies_answers_every_call_as_the_models_do(
    calls: list[tuple[str, Any, Any, Any]],
) -> None:
    """One maker over a run of calls (the SDK's), where a body it checked before may come back
    with values equal to it but of another type or form: every answer is the models' answer."""
    maker = UsageMaker("shop")
    for n, (asset, units, revenue, grant) in enumerate(calls):
        event_id, when = f"u-{n}", "2026-11-28T17:23:05.123456Z"
        event = usage_dict(event_id, "shop", when, asset, units, revenue, grant)
        slow = outcome(partial(parse_event, event))
        made = outcome(partial(maker, event_id, when, asset, units, revenue, grant, fresh=True))
        assert made == slow, (asset, units, revenue, grant)
        if not isinstance(made, tuple):
            assert signed_bytes(made) == signed_bytes(slow)


def orjson_loads(data: bytes) -> dict[str, Any]:
    import json

    return dict(json.loads(data))


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=12), st.text(max_size=12), st.text(max_size=12))
def test_event_parts_agree_with_the_reference(event_id: str, actor: str, when: str) -> None:
    body = rfc8785.dumps({"asset": "m", "units": 1})
    try:
        head, tail = event_parts(event_id, "usage.recorded", actor, when, body)
    except rfc8785.CanonicalizationError:  # a lone surrogate: the reference refuses it too
        return
    signed = {"id": event_id, "type": "usage.recorded", "actor": actor, "occurred_at": when,
              "body": {"asset": "m", "units": 1}}  # fmt: skip
    assert head + tail == rfc8785.dumps(signed)


def test_event_bytes_around_a_canonical_body_equal_the_whole_encoding() -> None:
    from ledger.canonical import canonical_bytes, event_bytes

    bodies = [{"asset": "m", "units": 3}, {"metadata": {"\U0001f600": 1, "\ufb01": "x"}, "z": []}]
    for body in bodies:
        for actor in ("shop", "caf\u00e9", 'q"uote\n', "\u2028"):
            signed = {"id": "i\\d", "type": "usage.recorded", "actor": actor,
                      "occurred_at": "2026-11-28T17:23:05.123456Z", "body": body}  # fmt: skip
            raw = canonical_bytes(body)
            assert event_bytes("i\\d", "usage.recorded", actor, signed["occurred_at"], raw) == (
                canonical_bytes(signed)
            )
            leaf = {**signed, "recorded_at": "2026-11-28T17:23:06.000000Z"}
            assert event_bytes("i\\d", "usage.recorded", actor, signed["occurred_at"], raw,
                               leaf["recorded_at"]) == canonical_bytes(leaf)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["u-1", "u-2", 'q"3', "caf\u00e9", "b\\s"]),
            st.sampled_from(["m", "model-7", 'a"b', "\u00e9t\u00e9"]),
            st.one_of(st.integers(0, 2), st.integers(0, 2**53 - 1)),  # bodies repeat: shared
            st.one_of(st.none(), st.just(10), st.integers(0, 10**9)),
            st.one_of(st.none(), st.sampled_from(["g-1", "g\\2"])),
        ),
        max_size=12,
    ),
    st.sampled_from(["shop", 'sh"op', "caf\u00e9"]),
)
def test_batches_encode_as_their_events_do_one_by_one(
    uses: list[tuple[str, str, int, int | None, str | None]], actor: str
) -> None:
    maker = UsageMaker(actor)
    when = "2026-11-29T07:00:00.000001Z"
    events = [
        maker(f"{i}-{event_id}", when, asset, units, revenue, grant)
        for i, (event_id, asset, units, revenue, grant) in enumerate(uses)
    ]
    registration = parse_event({"id": "r", "type": "party.registered", "actor": actor,
                                "occurred_at": "2026-11-29T07:00:00.000000Z",
                                "body": {"party": actor, "kind": "deployer", "name": "x",
                                         "public_key": "ab" * 32}})  # fmt: skip
    for batch in (events, [registration, *events]):
        assert encode_all(batch) == [encode(e) for e in batch]
        assert encode_all(batch) == encode_all(copy.deepcopy(batch))  # bodies not shared


@settings(max_examples=200, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["m", "model-7"]),
            st.integers(0, 2),
            st.sampled_from([None, 10, 11]),
            st.sampled_from([None, "g-1"]),
        ),
        min_size=2,
        max_size=30,
    )
)
def test_a_plain_batch_writes_each_shared_body_as_its_own(
    uses: list[tuple[str, int, int | None, str | None]],
) -> None:
    """The SDK's batches: plain strings and few distinct bodies, each model shared by the uses
    that have it; each event's bytes are still its own."""
    maker = UsageMaker("shop")
    when = "2026-11-29T07:00:00.000001Z"
    events = [maker(f"u-{i}", when, *use, fresh=True) for i, use in enumerate(uses)]
    assert encode_all(events) == [encode(e) for e in events]
