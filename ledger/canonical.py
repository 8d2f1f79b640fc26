"""The one place where JSON values become the bytes that are hashed and signed: RFC 8785 (JCS).

This module does no I/O. `canonical_bytes` turns a JSON value into its RFC 8785 canonical form;
`loads_strict` parses untrusted JSON text and refuses whatever the ledger cannot hash the same way
on every machine (duplicate keys, floats, NaN/Infinity, bad UTF-8, lone surrogates).

Fast path. `rfc8785.dumps` is the reference, written in Python (about 25 us for a typical event).
`orjson.dumps(value, option=OPT_SORT_KEYS | OPT_STRICT_INTEGER)` gives the same bytes (about
0.5 us) whenever `_fast_path_safe(value)` holds, for these reasons:

* Types (RFC 8785 section 3.1, I-JSON data only): the check admits only the exact builtin types
  dict, list, tuple, str, int, bool and None. orjson serializes these natively; subclasses, enums,
  dataclasses, datetimes, UUIDs, numpy values and fragments, which orjson would encode its own
  way, all go to the reference. So do floats: ES6 number formatting (section 3.2.2.3) is left to
  the reference alone.
* Literals (section 3.2.2.1): both write `true`, `false`, `null`.
* Strings (section 3.2.2.2): both escape only `"`, `\\` and U+0000..U+001F, the latter as
  `\\b \\t \\n \\f \\r` or lowercase `\\u00xx`, and write everything else (`/`, DEL, U+2028,
  U+2029, all non-ASCII) as raw UTF-8; the tests check this over every Unicode scalar value.
* Integers (section 3.2.2.3): `OPT_STRICT_INTEGER` refuses exactly what the reference refuses,
  anything outside +-(2**53 - 1); within it both write plain decimal digits.
* Key order (section 3.2.3): RFC 8785 sorts by UTF-16 code units, orjson by UTF-8 bytes, that is
  by code points. The two orders agree unless a key holds a character beyond the BMP (U+10000 and
  up, a surrogate pair in UTF-16, which sorts below U+E000..U+FFFF there but above them in code
  point order). The check therefore admits a dict only if every key is an exact str within the BMP.
* Whitespace and encoding (sections 3.2.1, 3.2.4): both write no whitespace, and UTF-8.
* Anything orjson still refuses (lone surrogates, out-of-range integers, nesting deeper than its
  limit) falls back to the reference, which then encodes or refuses it with its own error.

Every refusal of `canonical_bytes` is an `rfc8785.CanonicalizationError`, a `ValueError`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import orjson
import rfc8785

from .errors import InvalidEvent

__all__ = ["MAX_EXACT_INT", "canonical_bytes", "loads_strict"]

# Section 3.2.2.3: JSON numbers are IEEE-754 doubles, exact for integers up to 2**53 - 1.
MAX_EXACT_INT: Final = 2**53 - 1

_ORJSON_OPTIONS: Final = orjson.OPT_SORT_KEYS | orjson.OPT_STRICT_INTEGER
_SCALAR_TYPES: Final = frozenset({str, int, bool, type(None)})
_FIRST_NON_BMP: Final = "\U00010000"
_SHOW_LIMIT: Final = 60

# A `\uD800`..`\uDFFF` escape; only text holding one can decode to a lone surrogate.
_SURROGATE_ESCAPE: Final = re.compile(r"\\u[dD][89a-fA-F]")


def canonical_bytes(value: object, *, shape_known: bool = False) -> bytes:
    """The RFC 8785 canonical UTF-8 bytes of a JSON value (dict, list, tuple, str, int, ...).

    `shape_known=True` skips the walk over the value for callers whose value is built from
    validated models with ASCII keys, plain str/int/bool/None leaves and no floats (the event
    models without metadata); orjson still refuses integers outside the exact range.

    Raises `rfc8785.CanonicalizationError` (a `ValueError`) for what RFC 8785 cannot encode:
    integers outside +-(2**53 - 1), NaN and infinities, lone surrogates, non-str keys, other types.
    """
    if shape_known or _fast_path_safe(value):
        try:
            return orjson.dumps(value, option=_ORJSON_OPTIONS)
        except orjson.JSONEncodeError:
            pass  # the reference below encodes the value or says why it cannot
    return _reference_bytes(value)


def _fast_path_safe(value: object) -> bool:
    """Whether orjson's sorted output for `value` is byte-identical to RFC 8785 (module docstring).

    Leaves and ASCII keys are tested inline, so that only containers cost a call.
    """
    if type(value) is dict:
        for key, item in value.items():
            if type(key) is not str or not (key.isascii() or _bmp_only(key)):
                return False
            if type(item) not in _SCALAR_TYPES and not _fast_path_safe(item):
                return False
        return True
    kind = type(value)
    if kind is list or kind is tuple:
        for item in cast(Sequence[object], value):
            if type(item) not in _SCALAR_TYPES and not _fast_path_safe(item):
                return False
        return True
    return kind in _SCALAR_TYPES


def _bmp_only(key: str) -> bool:
    """No character needs a UTF-16 surrogate pair, so both key orders agree (section 3.2.3)."""
    return max(key, default="") < _FIRST_NON_BMP


def _reference_bytes(value: object) -> bytes:
    """`rfc8785.dumps`, with its one stray error type brought under `CanonicalizationError`."""
    try:
        return rfc8785.dumps(cast(Any, value))
    except UnicodeEncodeError as e:
        # The reference sorts keys by their UTF-16 encoding before it checks them (section 3.2.3);
        # a lone surrogate in a key fails that encoding.
        raise rfc8785.CanonicalizationError("object key contains a lone surrogate") from e


class _Refused(Exception):
    """Raised inside the parser's hooks; `loads_strict` turns it into `InvalidEvent`."""


def loads_strict(data: bytes | str, where: str = "json") -> object:
    """Parse untrusted JSON text (RFC 8259) into dicts, lists, str, int, bool and None.

    Refuses, raising `InvalidEvent(None, where, reason)`: invalid UTF-8, lone surrogates (raw or
    as escapes), duplicate object keys, numbers with a fraction or exponent, NaN and Infinity,
    integers outside +-(2**53 - 1), and anything that is not JSON. These are the inputs that could
    not be hashed as RFC 8785 canonical JSON with their meaning intact (section 3.1, I-JSON).
    """
    try:
        text = _as_text(data)
        value = json.loads(
            text,
            object_pairs_hook=_object_without_duplicates,
            parse_float=_refuse_float,
            parse_int=_exact_int,
            parse_constant=_refuse_constant,
        )
        if _SURROGATE_ESCAPE.search(text):
            _refuse_lone_surrogates(value)
    except _Refused as e:
        raise InvalidEvent(None, where, str(e)) from None
    except json.JSONDecodeError as e:
        reason = f"not valid JSON: {e.msg} at line {e.lineno} column {e.colno}"
        raise InvalidEvent(None, where, reason) from None
    except RecursionError:
        raise InvalidEvent(None, where, "not valid JSON: nested too deeply") from None
    return value


def _as_text(data: bytes | str) -> str:
    """The text itself, refusing bytes that are not UTF-8 and characters UTF-8 cannot carry."""
    if isinstance(data, str):
        if not data.isascii():
            try:
                data.encode("utf-8")
            except UnicodeEncodeError as e:
                point = _code_point(data[e.start])
                raise _Refused(f"lone surrogate {point} at character {e.start}") from None
        return data
    try:
        return data.decode("utf-8")  # strict: refuses overlong forms and encoded surrogates too
    except UnicodeDecodeError as e:
        raise _Refused(f"invalid UTF-8 at byte {e.start}") from None


def _object_without_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    """An object whose member names are unique (I-JSON, which RFC 8785 section 3.1 requires)."""
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise _Refused(f"duplicate key {_show(key)}")
            seen.add(key)
    return obj


def _refuse_float(literal: str) -> object:
    """Every number with a fraction or exponent: amounts travel as decimal strings."""
    raise _Refused(f"number {_clip(literal)} is not allowed; write amounts as decimal strings")


def _exact_int(literal: str) -> int:
    """An integer the canonical form carries exactly (section 3.2.2.3), else a refusal."""
    # 17 characters hold every integer within +-(2**53 - 1); longer ones are refused unconverted.
    if len(literal) <= 17:
        number = int(literal)
        if -MAX_EXACT_INT <= number <= MAX_EXACT_INT:
            return number
    raise _Refused(
        f"integer {_clip(literal)} is outside +-{MAX_EXACT_INT}, the range JSON carries "
        "exactly; write amounts as decimal strings"
    )


def _refuse_constant(name: str) -> object:
    """NaN, Infinity and -Infinity, which are not JSON (RFC 8259 section 6)."""
    raise _Refused(f"{name} is not allowed; JSON has no NaN or Infinity")


def _refuse_lone_surrogates(value: object) -> None:
    """Refuse a string or key holding an unpaired `\\ud800`..`\\udfff` escape."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")
            except UnicodeEncodeError as e:
                reason = f"lone surrogate {_code_point(value[e.start])} in a string"
                raise _Refused(f"{reason}; UTF-8 cannot encode it") from None
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_lone_surrogates(key)
            _refuse_lone_surrogates(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_lone_surrogates(item)


def _code_point(char: str) -> str:
    return f"\\u{ord(char):04x}"


def _show(text: str) -> str:
    """A one-line, bounded rendering of a string from the input, for error messages."""
    return _clip(repr(text))


def _clip(text: str) -> str:
    return text if len(text) <= _SHOW_LIMIT else text[: _SHOW_LIMIT - 3] + "..."


PLAIN_HEAD: Final = '{"actor":"%s","body":%s,"id":"%s","occurred_at":"%s"'
"""`event_parts`'s head as a text template, for `actor`, `id` and `occurred_at` that are all
`plain` and a `body` that is canonical text: filling it in and encoding it as UTF-8 gives the
same bytes, without a check per string (callers check many at once)."""

_PLAIN_HEAD_BYTES: Final = PLAIN_HEAD.encode().replace(b"%s", b"%b")


def event_bytes(
    id: str, type: str, actor: str, occurred_at: str, body: bytes, recorded_at: str | None = None
) -> bytes:
    """RFC 8785 bytes of an event's signed fields (and its leaf, given `recorded_at`) around a
    body that is already canonical: `actor, body, id, occurred_at, recorded_at, type` is the
    sorted key order of section 3.2.3, and strings escape as section 3.2.2.2 says."""
    head, tail = event_parts(id, type, actor, occurred_at, body)
    if recorded_at is None:
        return head + tail
    return head + recorded_at_member(recorded_at) + tail


def event_and_leaf_bytes(
    id: str, type: str, actor: str, occurred_at: str, body: bytes, recorded_at: str
) -> tuple[bytes, bytes]:
    """`event_bytes` without and with `recorded_at`, sharing the work."""
    head, tail = event_parts(id, type, actor, occurred_at, body)
    return head + tail, head + recorded_at_member(recorded_at) + tail


def event_parts(
    id: str, type: str, actor: str, occurred_at: str, body: bytes
) -> tuple[bytes, bytes]:
    """An event's canonical bytes around an already canonical `body`, in two parts: the signed
    bytes are `head + tail`, the Merkle leaf's are `head + recorded_at_member(t) + tail`."""
    if plain(id) and plain(actor) and plain(occurred_at) and plain(type):
        # the common case: ASCII ids and timestamps go between quotes unchanged
        head = _PLAIN_HEAD_BYTES % (actor.encode(), body, id.encode(), occurred_at.encode())
        return head, b',"type":"%b"}' % type.encode()
    head = b"".join((b'{"actor":', _string(actor), b',"body":', body, b',"id":', _string(id),
                     b',"occurred_at":', _string(occurred_at)))  # fmt: skip
    return head, b',"type":' + _string(type) + b"}"


def recorded_at_member(recorded_at: str) -> bytes:
    """`,"recorded_at":"..."`, the member a leaf adds between an event's two parts."""
    return b',"recorded_at":' + _string(recorded_at)


def plain(text: str) -> bool:
    """Printable ASCII without `"` or `\\`: section 3.2.2.2 writes it between quotes unchanged
    (so does any concatenation of such strings, which lets a caller check many at once)."""
    return text.isascii() and text.isprintable() and '"' not in text and "\\" not in text


def usage_body(asset: str, units: int, revenue: int | None, grant: str | None) -> bytes:
    """RFC 8785 bytes of a `usage.recorded` body, the log's most common value, without building
    a dict when its strings are `plain`."""
    if plain(asset) and (grant is None or plain(grant)):
        return plain_usage_body(asset, units, revenue, grant).encode()
    body: dict[str, object] = {"asset": asset, "units": units}
    if revenue is not None:
        body["revenue"] = revenue
    if grant is not None:
        body["grant"] = grant
    return canonical_bytes(body)


def plain_usage_body(asset: str, units: int, revenue: int | None, grant: str | None) -> str:
    """`usage_body` as text, for an `asset` and `grant` that are `plain`: keys in sorted order
    (`asset, grant, revenue, units`), absent ones left out. `units` and `revenue` are the models'
    validated integers (0 to 2**53 - 1), which section 3.2.2.3 writes as plain decimal digits."""
    if grant is None:
        if revenue is None:
            return f'{{"asset":"{asset}","units":{units:d}}}'
        return f'{{"asset":"{asset}","revenue":{revenue:d},"units":{units:d}}}'
    if revenue is None:
        return f'{{"asset":"{asset}","grant":"{grant}","units":{units:d}}}'
    return f'{{"asset":"{asset}","grant":"{grant}","revenue":{revenue:d},"units":{units:d}}}'


def flat_object_bytes(value: Mapping[str, object]) -> bytes:
    """`canonical_bytes` of a flat object (a statement line, say) whose keys and string values
    are `plain` and whose numbers are exact integers, written from a template of its sorted keys
    rather than by the encoder: the same bytes, for the millions of small objects a settlement
    sorts. Anything else goes to `canonical_bytes`."""
    keys = tuple(sorted(value))
    template = _FLAT_TEMPLATES.get(keys)
    if template is None:
        if not all(type(k) is str and plain(k) for k in keys):
            return canonical_bytes(value)
        # a key's "%" is text, not a place for a value
        template = "{" + ",".join(f'"{k.replace("%", "%%")}":%s' for k in keys) + "}"
        if len(_FLAT_TEMPLATES) < 256:
            _FLAT_TEMPLATES[keys] = template
    items = []
    for k in keys:
        v = value[k]
        if type(v) is str and plain(v):
            items.append(f'"{v}"')
        elif type(v) is int and -MAX_EXACT_INT <= v <= MAX_EXACT_INT:
            items.append(str(v))
        else:
            return canonical_bytes(value)
    return (template % tuple(items)).encode()


_FLAT_TEMPLATES: dict[tuple[str, ...], str] = {}


def _string(text: str) -> bytes:
    try:
        return orjson.dumps(text)  # a plain str: the same escaping as section 3.2.2.2
    except orjson.JSONEncodeError:
        return canonical_bytes(text)  # a lone surrogate: the reference says why it cannot
