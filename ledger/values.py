"""Value types of the log (DESIGN.md, "Event types"): amounts, decimals, timestamps, identifiers.

Each parser takes what a client may write and returns the one canonical encoding of its meaning,
or raises ValueError with a reason a person can act on. No I/O.
"""

from __future__ import annotations

import os
import re
import threading
import time
import unicodedata
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from fractions import Fraction

MICROS = 1_000_000
MAX_MICROS = (
    2**53 - 1
)  # canonical JSON carries integers exactly up to here (RFC 8785 section 3.2.2.3)
MAX_ID = 128
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"
_MIN_YEAR, _MAX_YEAR = 1970, 2199
_DECIMAL = re.compile(r"([0-9]+)(?:\.([0-9]+))?")
_MAX_DECIMAL_CHARS = 40


def nfc(text: str) -> str:
    """Unicode NFC, which DESIGN.md requires before hashing."""
    return text if text.isascii() else unicodedata.normalize("NFC", text)


def identifier(value: object, what: str = "identifier") -> str:
    """An id: 1 to 128 printable characters, NFC."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    text = nfc(value)
    if not 1 <= len(text) <= MAX_ID:
        raise ValueError(f"{what} must be 1 to {MAX_ID} characters, got {len(text)}")
    if not text.isprintable():
        raise ValueError(f"{what} must be printable characters only")
    return text


def text(value: object, what: str, limit: int) -> str:
    """Free text: printable, NFC, at most `limit` characters, not empty."""
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, got {type(value).__name__}")
    out = nfc(value)
    if not 1 <= len(out) <= limit:
        raise ValueError(f"{what} must be 1 to {limit} characters, got {len(out)}")
    if not out.isprintable():
        raise ValueError(f"{what} must be printable characters only")
    return out


def _split_decimal(value: object, what: str) -> tuple[str, str]:
    if isinstance(value, bool | float):
        raise ValueError(f'{what} must be a decimal string such as "0.25", not a {_kind(value)}')
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"{what} must not be negative, got {value}")
        return str(value), ""
    if isinstance(value, Decimal):
        if not value.is_finite() or value < 0:
            raise ValueError(f"{what} must be a finite non-negative decimal, got {value}")
        value = format(value, "f")
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a decimal string, got {_kind(value)}")
    if len(value) > _MAX_DECIMAL_CHARS:
        raise ValueError(f"{what} has more than {_MAX_DECIMAL_CHARS} characters")
    m = _DECIMAL.fullmatch(value)
    if m is None:
        raise ValueError(
            f'{what} must be a plain non-negative decimal like "12.34" (no sign or exponent), '
            f"got {value!r}"
        )
    return m.group(1), m.group(2) or ""


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    return "float" if isinstance(value, float) else type(value).__name__


def amount_micros(value: object, what: str = "amount") -> int:
    """A currency amount as integer micros.

    Decimal strings (and Decimal) are currency units with at most 6 decimals; a Python int is
    already micros, the canonical form (DESIGN.md: "every amount is an integer number of micros").
    """
    if isinstance(value, int) and not isinstance(value, bool):
        micros = value
    else:
        whole, frac = _split_decimal(value, what)
        if len(frac.rstrip("0")) > 6:
            raise ValueError(f"{what} has more than 6 decimals (the ledger counts in micros)")
        micros = int(whole) * MICROS + int((frac + "000000")[:6])
    if not 0 <= micros <= MAX_MICROS:
        raise ValueError(f"{what} must be between 0 and {MAX_MICROS} micros, got {micros}")
    return micros


def decimal_string(value: object, what: str = "decimal") -> str:
    """A rate, price or weight in lowest form: no exponent, sign or trailing zeros."""
    whole, frac = _split_decimal(value, what)
    whole = whole.lstrip("0") or "0"
    frac = frac.rstrip("0")
    return f"{whole}.{frac}" if frac else whole


def as_fraction(decimal: str) -> Fraction:
    """The exact rational value of a canonical decimal string."""
    return Fraction(decimal)


_CANONICAL_TS = re.compile(r"(\d{4})-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z")


def timestamp(value: object, what: str = "timestamp") -> str:
    """RFC 3339 in UTC with microseconds and Z, e.g. 2026-11-28T17:23:05.123456Z."""
    if isinstance(value, str) and _CANONICAL_TS.fullmatch(value):
        try:  # already canonical: check it is a real date and time in range, keep it
            datetime.fromisoformat(value[:-1])
        except ValueError:
            raise ValueError(f"{what} must be an RFC 3339 timestamp, got {value!r}") from None
        if _MIN_YEAR <= int(value[:4]) <= _MAX_YEAR:
            return value
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            raise ValueError(f"{what} must be an RFC 3339 timestamp, got {value[:40]!r}") from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValueError(f"{what} must be an RFC 3339 timestamp string, got {_kind(value)}")
    if parsed.tzinfo is None:
        raise ValueError(f"{what} must carry a time zone (use Z for UTC)")
    parsed = parsed.astimezone(UTC)
    if not _MIN_YEAR <= parsed.year <= _MAX_YEAR:
        raise ValueError(f"{what} must lie in the years {_MIN_YEAR} to {_MAX_YEAR}")
    return parsed.strftime(TIMESTAMP_FORMAT)


_second: tuple[int, str] = (-1, "")  # the current second and its text up to the decimal point


def now_timestamp() -> str:
    """The current time in the canonical form, the second written once (the SDK's hot path)."""
    global _second
    second, micros = divmod(time.time_ns() // 1000, 1_000_000)
    known = _second
    if second != known[0]:
        text = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        known = _second = (second, text)
    return known[1] + str(micros).zfill(6) + "Z"


def format_timestamp(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime(TIMESTAMP_FORMAT)


def format_micros(micros: int) -> str:
    """Micros as a decimal string with 6 decimals, for people to read."""
    sign = "-" if micros < 0 else ""
    whole, frac = divmod(abs(micros), MICROS)
    return f"{sign}{whole}.{frac:06d}"


# The random part of a UUIDv7 after its version digit, `rrr-Vrrr-rrrrrrrrrrrr` (RFC 9562: 12 bits
# of rand_a, the variant bits 10 and 62 bits of rand_b), made 800 at a time from one read of the
# operating system's random bytes, in a few passes in C over the whole block: each byte becomes
# the hex digit of its low four bits, the dashes are written over their places, and the digit at
# the variant's place becomes 8, 9, a or b by its low two bits.
_POOL = 800
_WIDTH = 21
_DIGITS = b"0123456789abcdef"
_HEX = bytes(_DIGITS[i & 15] for i in range(256))
_VARIANT = bytes.maketrans(_DIGITS, b"89ab" * 4)  # digit n to 8 + (n & 3)
_DASHES = b"-" * _POOL
_PIECE = re.compile(f".{{{_WIDTH}}}", re.DOTALL)


def _random_parts() -> Iterator[str]:
    block = bytearray(os.urandom(_WIDTH * _POOL).translate(_HEX))
    block[3::_WIDTH] = _DASHES
    block[8::_WIDTH] = _DASHES
    block[4::_WIDTH] = block[4::_WIDTH].translate(_VARIANT)
    return iter(_PIECE.findall(block.decode("ascii")))


class _Pool(threading.local):
    """Random parts not yet drawn, one pool per thread."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.parts: Iterator[str] = iter(())


_pool = _Pool()
# a forked child must not draw the parts its parent already drew
os.register_at_fork(after_in_child=_pool.reset)
# the current millisecond and the id's first 15 characters for it, written once per millisecond
_millisecond: tuple[int, str] = (-1, "")


def uuid7() -> str:
    """A time-ordered UUIDv7 (RFC 9562): 48-bit milliseconds, version 7, 74 random bits."""
    global _millisecond
    ms = time.time_ns() // 1_000_000
    known = _millisecond
    if ms != known[0]:
        t = f"{ms & 0xFFFFFFFFFFFF:012x}"
        known = _millisecond = (ms, f"{t[:8]}-{t[8:]}-7")
    pool = _pool
    for part in pool.parts:
        return known[1] + part
    pool.parts = _random_parts()
    return known[1] + next(pool.parts)
