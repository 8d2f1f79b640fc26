"""RFC 8785 (JSON Canonicalization Scheme): the one place where values become hashed bytes.

`canonical_bytes` encodes with orjson when that is byte-identical to RFC 8785 for the value (no
floats, integers inside the IEEE-754 exact range, no object key outside the Basic Multilingual
Plane), and with the `rfc8785` package otherwise. `loads_strict` parses untrusted JSON the way
the ledger needs it. No I/O.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
import rfc8785

from .errors import InvalidEvent

_MAX_INT = 2**53 - 1  # RFC 8785 section 3.2.2.3: numbers are IEEE-754 doubles


def canonical_bytes(value: object) -> bytes:
    """RFC 8785 bytes of a JSON value (dicts with str keys, lists, str, int, bool, None)."""
    if _fast_path_ok(value):
        try:
            return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
        except orjson.JSONEncodeError:
            pass  # e.g. a lone surrogate: let rfc8785 give its own error below
    try:
        return rfc8785.dumps(value)
    except (rfc8785.CanonicalizationError, UnicodeEncodeError, TypeError, ValueError) as e:
        raise InvalidEvent(None, "json", f"cannot be canonicalised: {e}") from None


def _fast_path_ok(value: object) -> bool:
    """orjson sorts keys by code point, RFC 8785 (section 3.2.3) by UTF-16 code unit: the two
    orders differ only for keys with characters above U+FFFF. Escaping of strings (section
    3.2.2.2) is the same in both; floats (section 3.2.2.3) always take the rfc8785 path."""
    if isinstance(value, str) or value is None or isinstance(value, bool):
        return True
    if isinstance(value, int):
        return -_MAX_INT <= value <= _MAX_INT
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str) or (not k.isascii() and max(k) > "\uffff"):
                return False
            if not _fast_path_ok(v):
                return False
        return True
    if isinstance(value, list | tuple):
        return all(_fast_path_ok(v) for v in value)
    return False


def _refuse_float(text: str) -> Any:
    raise ValueError(f"number {text} is not allowed; write amounts and rates as decimal strings")


def _refuse_constant(text: str) -> Any:
    raise ValueError(f"{text} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k!r}")
        out[k] = v
    return out


def loads_strict(data: bytes | str, where: str = "json") -> object:
    """Parse untrusted JSON: no duplicate keys, no floats, no NaN, valid UTF-8, no lone
    surrogates. Raises InvalidEvent(None, where, reason)."""
    if isinstance(data, bytes):
        try:
            data = data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise InvalidEvent(None, where, f"invalid UTF-8 at byte {e.start}") from None
    try:
        value = json.loads(
            data,
            object_pairs_hook=_no_duplicates,
            parse_float=_refuse_float,
            parse_constant=_refuse_constant,
        )
    except json.JSONDecodeError as e:
        raise InvalidEvent(None, where, f"not JSON: {e.msg} at column {e.colno}") from None
    except ValueError as e:
        raise InvalidEvent(None, where, str(e)) from None
    if _has_lone_surrogate(value):
        raise InvalidEvent(None, where, "a string holds a lone UTF-16 surrogate")
    return value


def _has_lone_surrogate(value: object) -> bool:
    if isinstance(value, str):
        return not value.isascii() and any("\ud800" <= c <= "\udfff" for c in value)
    if isinstance(value, dict):
        return any(_has_lone_surrogate(k) or _has_lone_surrogate(v) for k, v in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(v) for v in value)
    return False
