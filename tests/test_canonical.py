"""RFC 8785 canonical JSON: published vectors, agreement with `rfc8785`, strict parsing."""

from __future__ import annotations

import enum
import json
from collections import OrderedDict
from pathlib import Path
from typing import Any

import pytest
import rfc8785
from hypothesis import example, given, settings
from hypothesis import strategies as st

from ledger.canonical import MAX_EXACT_INT, canonical_bytes, flat_object_bytes, loads_strict
from ledger.errors import InvalidEvent

VECTORS = Path(__file__).parent / "vectors" / "rfc8785"
VECTOR_NAMES = sorted(p.name for p in (VECTORS / "input").glob("*.json"))

EVENT: dict[str, Any] = {
    "id": "evt-0000000000000000000000000000002a",
    "type": "usage.recorded",
    "actor": "party-acme",
    "occurred_at": "2026-05-09T07:35:25.123456Z",
    "prev": "ab" * 32,
    "body": {"asset": "ds-1", "model": "m-42", "units": 1234, "revenue": "12.500000"},
}


# --- published vectors (RFC 8785 appendix B and the cyberphone/json-canonicalization test data) ---


def test_vectors_are_present() -> None:
    assert len(VECTOR_NAMES) == 6


@pytest.mark.parametrize("name", VECTOR_NAMES, ids=VECTOR_NAMES)
def test_published_vector(name: str) -> None:
    value = json.loads((VECTORS / "input" / name).read_bytes())  # stdlib: the inputs hold floats
    expected = (VECTORS / "output" / name).read_bytes()
    hex_text = (VECTORS / "outhex" / name).with_suffix(".txt").read_text()
    assert bytes.fromhex(hex_text) == expected  # fromhex skips the spaces and newlines
    assert canonical_bytes(value) == expected


# --- agreement with the reference implementation ---

SAFE_INT = st.integers(min_value=-MAX_EXACT_INT, max_value=MAX_EXACT_INT)
# st.text() draws from all of Unicode except surrogates: controls, U+2028, DEL, non-BMP included.
TEXT = st.text() | st.sampled_from(["", "/", "\x7f", "\u2028", "\ufb33", "\U0001f602", "\x00"])


def json_values(scalars: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    return st.recursive(
        scalars,
        lambda inner: (
            st.lists(inner, max_size=5)
            | st.lists(inner, max_size=3).map(tuple)
            | st.dictionaries(TEXT, inner, max_size=6)
        ),
        max_leaves=30,
    )


NO_FLOATS = json_values(st.none() | st.booleans() | SAFE_INT | TEXT)
WITH_FLOATS = json_values(
    st.none() | st.booleans() | SAFE_INT | TEXT | st.floats(allow_nan=False, allow_infinity=False)
)


@settings(max_examples=2000, deadline=None)
@given(NO_FLOATS)
def test_agrees_with_rfc8785_without_floats(value: Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@settings(max_examples=300, deadline=None)
@given(WITH_FLOATS)
def test_agrees_with_rfc8785_with_floats(value: Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


def test_every_scalar_value_is_written_as_rfc8785_writes_it() -> None:
    # Section 3.2.2.2: escaping is per character, so one string of them all covers every one.
    everything = "".join(chr(c) for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF)
    assert canonical_bytes(everything) == rfc8785.dumps(everything)
    singles = [chr(c) for c in range(0x3000)] + ["\U00010000", "\U0001f602", "\U0010ffff"]
    assert canonical_bytes(singles) == rfc8785.dumps(singles)
    assert canonical_bytes({c: c for c in singles}) == rfc8785.dumps({c: c for c in singles})


def _utf8(text: str) -> bytes:
    return text.encode("utf-8")


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        # Section 3.2.3: U+1F602 is D83D DE02 in UTF-16, below U+FB33; in code points it is above.
        pytest.param(
            {"\ufb33": 1, "\U0001f602": 2, "\ue000": 3},
            _utf8('{"\U0001f602":2,"\ue000":3,"\ufb33":1}'),
            id="non-bmp-key-order",
        ),
        pytest.param(
            {"x": {"\U00010000": 0, "\uffff": 1}},
            _utf8('{"x":{"\U00010000":0,"\uffff":1}}'),
            id="non-bmp-key-order-nested",
        ),
        pytest.param({"b": 1, "a": 2, "": 3}, b'{"":3,"a":2,"b":1}', id="ascii-key-order"),
        pytest.param({"\u00e9": 1, "z": 2}, _utf8('{"z":2,"\u00e9":1}'), id="bmp-key-order"),
        pytest.param(
            "\x00\x07\x08\x09\x0a\x0b\x0c\x0d\x1f",
            b'"\\u0000\\u0007\\b\\t\\n\\u000b\\f\\r\\u001f"',
            id="control-characters",
        ),
        pytest.param("\u2028\u2029", _utf8('"\u2028\u2029"'), id="u2028-u2029-raw"),
        pytest.param("\x7f", b'"\x7f"', id="del-raw"),
        pytest.param("</script>", b'"</script>"', id="solidus-raw"),
        pytest.param('"\\', b'"\\"\\\\"', id="quote-backslash"),
        pytest.param("\u20ac\U0001f602", _utf8('"\u20ac\U0001f602"'), id="non-ascii-raw"),
        pytest.param({"a": {}, "b": [], "c": ()}, b'{"a":{},"b":[],"c":[]}', id="empty-containers"),
        pytest.param({}, b"{}", id="empty-object"),
        pytest.param((1, [2, (3,)]), b"[1,[2,[3]]]", id="tuples-as-arrays"),
        pytest.param([True, False, None], b"[true,false,null]", id="literals"),
        pytest.param(
            [MAX_EXACT_INT, -MAX_EXACT_INT, 0],
            b"[9007199254740991,-9007199254740991,0]",
            id="int-limits",
        ),
        pytest.param([1.0, -0.0, 1e21, 1e-7], b"[1,0,1e+21,1e-7]", id="floats-es6"),
        pytest.param(EVENT, rfc8785.dumps(EVENT), id="typical-event"),
    ],
)
def test_named_case(value: Any, expected: bytes) -> None:
    assert canonical_bytes(value) == expected
    assert rfc8785.dumps(value) == expected


class Colour(enum.IntEnum):
    RED = 1


class Kind(enum.StrEnum):
    USAGE = "usage"


class Text(str):
    pass


def _deep(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "value",
    [
        pytest.param([Colour.RED, {"k": Colour.RED}], id="int-enum"),
        pytest.param([Kind.USAGE, {Kind.USAGE: 1}], id="str-enum"),
        pytest.param([Text("x"), {Text("k"): Text("v")}], id="str-subclass"),
        pytest.param(OrderedDict([("b", 1), ("a", 2)]), id="dict-subclass"),
        pytest.param(_deep(300), id="deeper-than-orjson-allows"),
    ],
)
def test_other_inputs_follow_rfc8785(value: Any) -> None:
    assert canonical_bytes(value) == rfc8785.dumps(value)


@pytest.mark.parametrize(
    ("value", "message"),
    [
        pytest.param(2**53, "exceeds safe integer domain", id="big-integer"),
        pytest.param(-(2**53), "exceeds safe integer domain", id="big-negative-integer"),
        pytest.param({"n": [2**63]}, "exceeds safe integer domain", id="big-integer-nested"),
        pytest.param(2**64, "exceeds safe integer domain", id="beyond-64-bit"),
        pytest.param(float("nan"), "not representable", id="nan"),
        pytest.param([float("inf")], "not representable", id="infinity"),
        pytest.param("\ud800", "non-UTF-8", id="lone-surrogate-value"),
        pytest.param({"\udc00": 1}, "lone surrogate", id="lone-surrogate-key"),
        pytest.param({1: "one"}, "keys must be strings", id="int-key"),
        pytest.param(b"bytes", "unsupported type", id="bytes"),
        pytest.param({"s": {1, 2}}, "unsupported type", id="set"),
    ],
)
def test_refused(value: Any, message: str) -> None:
    with pytest.raises(rfc8785.CanonicalizationError, match=message):
        canonical_bytes(value)


def test_typical_event_takes_the_fast_path(monkeypatch: pytest.MonkeyPatch) -> None:
    def reference_called(value: object) -> bytes:
        raise AssertionError("rfc8785.dumps called for a value the fast path covers")

    expected = rfc8785.dumps(EVENT)
    monkeypatch.setattr(rfc8785, "dumps", reference_called)
    assert canonical_bytes(EVENT) == expected
    assert canonical_bytes([EVENT, (EVENT,), {"\u00e9\uffff": EVENT}]).startswith(b"[{")


@pytest.mark.parametrize(
    "value",
    [
        pytest.param({"\U0001f602": 1}, id="non-bmp-key"),
        pytest.param({"a": [1.5]}, id="float"),
        pytest.param({"a": Text("x")}, id="str-subclass"),
        pytest.param({"a": 2**53}, id="big-integer"),
    ],
)
def test_reference_decides_the_rest(monkeypatch: pytest.MonkeyPatch, value: Any) -> None:
    calls: list[object] = []

    def spy(v: Any) -> bytes:
        calls.append(v)
        return b"reference"

    monkeypatch.setattr(rfc8785, "dumps", spy)
    assert canonical_bytes(value) == b"reference"
    assert calls == [value]


# --- loads_strict ---


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b'{"asset": 1, "asset": 2}', "duplicate key 'asset'", id="duplicate-key"),
        pytest.param('{"a": {"b": 1, "b": 1}}', "duplicate key 'b'", id="duplicate-key-nested"),
        pytest.param('[{"x": 1}, {"y": 1, "y": 2}]', "duplicate key 'y'", id="duplicate-in-array"),
        pytest.param('{"amount": 1.5}', "number 1.5 is not allowed", id="fraction"),
        pytest.param("[1e5]", "number 1e5 is not allowed", id="exponent"),
        pytest.param("-0.0", "number -0.0 is not allowed", id="negative-zero-float"),
        pytest.param("1E400", "number 1E400 is not allowed", id="huge-exponent"),
        pytest.param('{"a": NaN}', "NaN is not allowed", id="nan"),
        pytest.param("Infinity", "Infinity is not allowed", id="infinity"),
        pytest.param("[-Infinity]", "-Infinity is not allowed", id="negative-infinity"),
        pytest.param("9007199254740992", "integer 9007199254740992 is outside", id="big-integer"),
        pytest.param(
            "-9007199254740992", "integer -9007199254740992 is outside", id="big-negative"
        ),
        pytest.param("1" * 5000, "integer 1111", id="5000-digit-integer"),
        pytest.param(b'{"a": "\xff"}', "invalid UTF-8 at byte 7", id="invalid-utf8"),
        pytest.param(b'"\xc0\xaf"', "invalid UTF-8 at byte 1", id="overlong-utf8"),
        pytest.param(b'"ab\xed\xa0\x80"', "invalid UTF-8 at byte 3", id="utf8-encoded-surrogate"),
        pytest.param(b'"\xe2\x82"', "invalid UTF-8 at byte 1", id="truncated-utf8"),
        pytest.param('"\\ud800"', "lone surrogate \\ud800", id="lone-high-surrogate-escape"),
        pytest.param('["\\uDC00"]', "lone surrogate \\udc00", id="lone-low-surrogate-escape"),
        pytest.param('"\\ude02\\ud83d"', "lone surrogate \\ude02", id="reversed-pair"),
        pytest.param('{"\\ud83d": 1}', "lone surrogate \\ud83d", id="lone-surrogate-in-key"),
        pytest.param('"a\ud800"', "lone surrogate \\ud800 at character 2", id="raw-lone-surrogate"),
        pytest.param('{"a": 1,}', "not valid JSON", id="trailing-comma"),
        pytest.param("", "not valid JSON", id="empty"),
        pytest.param('"tab\there"', "not valid JSON: Invalid control character", id="raw-control"),
        pytest.param(b'\xef\xbb\xbf{"a": 1}', "not valid JSON", id="byte-order-mark"),
        pytest.param("[1] [2]", "not valid JSON: Extra data", id="two-values"),
        pytest.param("[" * 100_000, "not valid JSON", id="too-deep"),
    ],
)
def test_loads_strict_refuses(data: bytes | str, message: str) -> None:
    with pytest.raises(InvalidEvent) as caught:
        loads_strict(data, where="line")
    assert message in caught.value.reason
    assert caught.value.field == "line"
    assert caught.value.event_id is None
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        pytest.param(
            '{"a": [1, -2, true, false, null]}', {"a": [1, -2, True, False, None]}, id="all"
        ),
        pytest.param(b'{"n": 9007199254740991}', {"n": MAX_EXACT_INT}, id="max-int"),
        pytest.param("-0", 0, id="negative-zero-int"),
        pytest.param('"\\ud83d\\ude02"', "\U0001f602", id="surrogate-pair-escape"),
        pytest.param('"\\\\ud800"', "\\ud800", id="escaped-backslash-not-a-surrogate"),
        pytest.param(_utf8('"\u20ac\U0001f602"'), "\u20ac\U0001f602", id="utf8-bytes"),
        pytest.param(' \t\n{"amount": "1.5"}\r\n', {"amount": "1.5"}, id="decimal-string"),
        pytest.param("[]", [], id="empty-array"),
    ],
)
def test_loads_strict_accepts(data: bytes | str, expected: object) -> None:
    value = loads_strict(data)
    assert value == expected
    assert json.dumps(value) == json.dumps(expected)  # ints stay ints, no float sneaks in


@settings(max_examples=500, deadline=None)
@given(NO_FLOATS)
def test_loads_strict_round_trips_canonical_bytes(value: Any) -> None:
    encoded = canonical_bytes(value)
    lists_for_tuples = json.loads(encoded)
    assert loads_strict(encoded) == lists_for_tuples
    assert loads_strict(encoded.decode()) == lists_for_tuples
    assert canonical_bytes(loads_strict(encoded)) == encoded


@settings(max_examples=500, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=6),
        st.one_of(st.text(max_size=10), st.integers(-(2**60), 2**60), st.none(), st.booleans()),
        max_size=8,
    )
)
@example({"%": ""})  # a key with the template's own placeholder sign
@example({"a%sb": 1, "%d": "%s"})
def test_flat_objects_from_a_template_equal_rfc8785(value: dict[str, Any]) -> None:
    try:
        expected = rfc8785.dumps(value)
    except rfc8785.CanonicalizationError:
        with pytest.raises(rfc8785.CanonicalizationError):
            flat_object_bytes(value)
        return
    assert flat_object_bytes(value) == expected
