"""Royalty statements (DESIGN.md, "Statement format"): building, signing, checking. No I/O.

The signature covers the RFC 8785 bytes of every field except `signature`; `unsigned_bytes` is
the one place that produces them.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

from ledger import merkle
from ledger.canonical import canonical_bytes, flat_object_bytes
from ledger.errors import InvalidEvent, SignatureInvalid
from ledger.keys import KeyPair, verify_signature

FORMAT = "edvex.statement/1"
IN_KINDS = frozenset({"revenue", "fee_in", "royalty_in"})
OUT_KINDS = frozenset({"fee_out", "royalty_out"})
KINDS = IN_KINDS | OUT_KINDS | {"retained"}


def build(
    *,
    run: int,
    party: str,
    currency: str,
    from_seq: int,
    to_seq: int,
    root: bytes,
    lines: Sequence[Mapping[str, Any]],
) -> dict[str, Any]:
    """An unsigned statement: lines sorted by their canonical bytes, totals summed."""
    # lines built by the cycle: fixed ASCII keys, str and int values
    ordered = sorted([dict(line) for line in lines], key=_LINE_KEY)
    totals = {
        "in": sum(line["amount"] for line in ordered if line["kind"] in IN_KINDS),
        "out": sum(line["amount"] for line in ordered if line["kind"] in OUT_KINDS),
        "retained": sum(line["amount"] for line in ordered if line["kind"] == "retained"),
    }
    return {
        "format": FORMAT,
        "run": run,
        "party": party,
        "currency": currency,
        "cycle": {"from_seq": from_seq, "to_seq": to_seq},
        "checkpoint": {"size": to_seq, "root": root.hex()},
        "lines": ordered,
        "totals": totals,
    }


_LINE_KEY = flat_object_bytes  # a line's canonical bytes


def unsigned_part(statement: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in statement.items() if k != "signature"}


def unsigned_bytes(statement: Mapping[str, Any], *, built: bool = False) -> bytes:
    """The bytes the operator signs: RFC 8785 of everything except `signature`. `built` says
    the statement came from `build` (fixed ASCII keys), so the shape walk can be skipped."""
    return canonical_bytes(unsigned_part(statement), shape_known=built)


def sign(statement: Mapping[str, Any], operator: KeyPair) -> dict[str, Any]:
    return sign_encoded(statement, operator)[0]


def sign_encoded(statement: Mapping[str, Any], operator: KeyPair) -> tuple[dict[str, Any], bytes]:
    """A statement from `build`, signed, with its unsigned bytes: a statement can hold a line per
    creator, and the root and the stored bytes are built from these rather than encoded anew."""
    unsigned = unsigned_bytes(statement, built=True)
    signature = operator.sign(unsigned)
    signed = {
        **unsigned_part(statement),
        "signature": {"alg": "ed25519", "key": operator.public_hex, "sig": signature.hex()},
    }
    return signed, unsigned


def signed_bytes_from(unsigned: bytes, signature: Mapping[str, Any]) -> bytes:
    """`statement_bytes` of a signed statement, from its unsigned bytes and signature block.

    RFC 8785 sorts `signature` between `run` and `totals`, the last member, and `totals` holds
    three integers only, so the block goes before the one `,"totals":` of the unsigned bytes.
    """
    at = unsigned.rfind(b',"totals":')
    if at < 0:
        raise ValueError("unsigned statement bytes without totals")
    return b"".join((unsigned[:at], b',"signature":', canonical_bytes(dict(signature)),
                     unsigned[at:]))  # fmt: skip


def statement_bytes(statement: Mapping[str, Any], *, built: bool = False) -> bytes:
    """The whole signed statement as stored and exported: RFC 8785."""
    return canonical_bytes(dict(statement), shape_known=built)


def statement_hash(statement: Mapping[str, Any], *, built: bool = False) -> bytes:
    return hashlib.sha256(statement_bytes(statement, built=built)).digest()


def statements_root(statements: Sequence[Mapping[str, Any]], *, built: bool = False) -> bytes:
    """RFC 9162 Merkle root whose leaves are the SHA-256 of each statement's unsigned bytes
    (what its signature covers), in party order: anyone holding the log can recompute it."""
    return root_of_unsigned([(str(s["party"]), unsigned_bytes(s, built=built)) for s in statements])


def root_of_unsigned(parties: Sequence[tuple[str, bytes]]) -> bytes:
    """`statements_root` from each statement's party and unsigned bytes."""
    ordered = sorted(parties, key=lambda p: p[0])
    leaves = [hashlib.sha256(raw).digest() for _party, raw in ordered]
    return merkle.root_from_leaves([merkle.leaf_hash(h) for h in leaves])


def check_signature(statement: Mapping[str, Any], trusted_key: str) -> None:
    """Raise unless `statement` is signed by `trusted_key` (hex) over its unsigned bytes."""
    sig = statement.get("signature")
    if not isinstance(sig, Mapping) or sig.get("alg") != "ed25519":
        raise SignatureInvalid("statement", "no ed25519 signature block")
    if sig.get("key") != trusted_key:
        raise SignatureInvalid(
            "statement", f"signed by key {str(sig.get('key'))[:16]}…, not the trusted operator key"
        )
    try:
        raw = bytes.fromhex(str(sig.get("sig")))
    except ValueError:
        raise SignatureInvalid("statement", "signature is not hex") from None
    verify_signature(trusted_key, unsigned_bytes(statement), raw, "statement")


def check_shape(statement: object) -> Mapping[str, Any]:
    """The fields a verifier needs, with their types; raises InvalidEvent naming the field."""
    if not isinstance(statement, Mapping):
        raise InvalidEvent(None, "statement", "must be a JSON object")
    if statement.get("format") != FORMAT:
        raise InvalidEvent(None, "format", f"expected {FORMAT!r}, got {statement.get('format')!r}")
    for name, kind in (
        ("run", int),
        ("party", str),
        ("cycle", Mapping),
        ("checkpoint", Mapping),
        ("lines", list),
        ("totals", Mapping),
    ):
        if not isinstance(statement.get(name), kind):
            raise InvalidEvent(None, name, f"missing or not a {kind.__name__}")
    cycle, cp = statement["cycle"], statement["checkpoint"]
    if not all(isinstance(cycle.get(k), int) for k in ("from_seq", "to_seq")):
        raise InvalidEvent(None, "cycle", "needs integer from_seq and to_seq")
    if not isinstance(cp.get("size"), int) or not isinstance(cp.get("root"), str):
        raise InvalidEvent(None, "checkpoint", "needs an integer size and a hex root")
    return statement
