"""C2SP tlog-checkpoint bodies in C2SP signed-notes, signed with Ed25519.

This module does no I/O. A checkpoint note is (c2sp.org/tlog-checkpoint, c2sp.org/signed-note):

    <origin>\\n
    <tree size in decimal>\\n
    <base64 root hash>\\n
    [<extension line>\\n ...]
    \\n
    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>\\n
    [more signature lines]

The signature covers the note text: every line before the blank line, final newline included.
Signatures from keys other than the one asked for (witness cosignatures, rotated keys) are
ignored, as signed-note requires. Malformed text raises `ProofInvalid("checkpoint note", ...)`;
a missing or bad signature raises `SignatureInvalid("checkpoint", ...)`.
"""

from __future__ import annotations

import base64
import binascii
import re
from dataclasses import dataclass
from hashlib import sha256

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import ProofInvalid, SignatureInvalid

__all__ = [
    "Checkpoint",
    "key_id",
    "parse_checkpoint",
    "sign_checkpoint",
    "sign_note",
    "verify_checkpoint",
    "verify_note",
]

# signed-note "Signatures": signature type byte 0x01 is Ed25519.
SIG_TYPE_ED25519 = 0x01
ROOT_SIZE = 32
ED25519_PUBLIC_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
KEY_ID_SIZE = 4
# signed-note "Format": verifiers MUST accept at least 16 signatures; x/mod/sumdb/note caps at 100.
MAX_SIGNATURES = 100
MAX_TREE_SIZE = 2**64 - 1

_SIG_PREFIX = "\u2014 "  # signed-note "Format": em dash (U+2014), space.
_NOTE = "checkpoint note"
_SIGNATURE = "checkpoint"
_DECIMAL = re.compile(r"0|[1-9][0-9]*")
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f]")


@dataclass(frozen=True)
class Checkpoint:
    """tlog-checkpoint "Note text": origin, tree size and root hash, plus opaque extensions."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        problem = _field_problem(self)
        if problem is not None:
            raise ValueError(problem)

    def body(self) -> str:
        """The note text: one line each for origin, size, base64 root and extensions."""
        lines = [self.origin, str(self.size), _b64(self.root), *self.extensions]
        return "".join(line + "\n" for line in lines)


def _field_problem(cp: Checkpoint) -> str | None:
    # tlog-checkpoint "Note text": non-empty lines, canonical size, root of the RFC 6962 tree.
    if not _is_text_line(cp.origin):
        return f"origin {cp.origin!r} is empty or not a single line of text"
    if isinstance(cp.size, bool) or not 0 <= cp.size <= MAX_TREE_SIZE:
        return f"tree size {cp.size!r} is not in 0..2**64-1"
    if len(cp.root) != ROOT_SIZE:
        return f"root hash is {len(cp.root)} bytes, expected {ROOT_SIZE}"
    for line in cp.extensions:
        if not _is_text_line(line):
            return f"extension line {line!r} is empty or not a single line of text"
    return None


def _is_text_line(line: str) -> bool:
    return line != "" and "\n" not in line and _is_note_text(line)


def _is_note_text(text: str) -> bool:
    # signed-note "Format": valid UTF-8 and no ASCII control characters other than newline.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return _CONTROL.search(text) is None


def _is_key_name(name: str) -> bool:
    # signed-note "Format": key names are non-empty, without Unicode spaces or plus (U+002B).
    return name != "" and "+" not in name and not any(c.isspace() for c in name)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _b64_strict(text: str) -> bytes | None:
    """Standard base64 (RFC 4648 section 4), padded and canonical; None if it is not."""
    try:
        data = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        return None
    return data if _b64(data) == text else None


# --- Keys ---------------------------------------------------------------------------------------


def key_id(name: str, public_key: bytes) -> bytes:
    """signed-note "Ed25519 signatures": SHA-256(name || 0x0A || 0x01 || public key)[:4]."""
    if len(public_key) != ED25519_PUBLIC_KEY_SIZE:
        raise ValueError(f"Ed25519 public key is {len(public_key)} bytes, expected 32")
    material = name.encode("utf-8") + b"\n" + bytes([SIG_TYPE_ED25519]) + public_key
    return sha256(material).digest()[:KEY_ID_SIZE]


# --- Signing ------------------------------------------------------------------------------------


def sign_note(text: str, name: str, key: SigningKey) -> str:
    """signed-note "Format": `text`, a blank line, and one Ed25519 signature line by `name`."""
    if not text.endswith("\n") or not _is_note_text(text):
        raise ValueError("note text must be UTF-8 ending in a newline, without control characters")
    if not _is_key_name(name):
        raise ValueError(f"key name {name!r} is empty or has a space or '+'")
    signature = key.sign(text.encode("utf-8")).signature
    kid = key_id(name, bytes(key.verify_key))
    return f"{text}\n{_SIG_PREFIX}{name} {_b64(kid + signature)}\n"


def sign_checkpoint(cp: Checkpoint, name: str, key: SigningKey) -> str:
    """The whole signed note for `cp`, signed by `key` under the key name `name`."""
    return sign_note(cp.body(), name, key)


# --- Verification -------------------------------------------------------------------------------


def verify_checkpoint(note: str, name: str, public_key: bytes) -> Checkpoint:
    """Verify `note` under the Ed25519 key (`name`, `public_key`) and parse its checkpoint."""
    return parse_checkpoint(verify_note(note, name, public_key))


def verify_note(note: str, name: str, public_key: bytes) -> str:
    """signed-note "Signatures": return the note text once `name`'s key has signed it.

    Lines from other keys (another name, or the same name with another key ID) are ignored. A
    line from this key that fails to verify rejects the whole note, and so does having none.
    """
    kid = key_id(name, public_key)
    text, lines = _split_note(note)
    verified = False
    for line_name, blob in (_parse_signature_line(line) for line in lines):
        if line_name != name or blob[:KEY_ID_SIZE] != kid:
            continue
        _verify_ed25519(public_key, text, blob[KEY_ID_SIZE:])
        verified = True
    if not verified:
        raise SignatureInvalid(_SIGNATURE, f"no signature line by {name!r} with key ID {kid.hex()}")
    return text


def _split_note(note: str) -> tuple[str, list[str]]:
    # signed-note "Format": text ending in newline, a blank line, then signature lines each
    # ending in newline; the text is separated from the signatures by the last empty line.
    if not _is_note_text(note):
        raise ProofInvalid(_NOTE, "not UTF-8, or has control characters other than newline")
    split = note.rfind("\n\n")
    if split < 0:
        raise ProofInvalid(_NOTE, "no blank line before the signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block.endswith("\n"):
        raise ProofInvalid(_NOTE, "no signature lines, or the last one lacks its newline")
    lines = block[:-1].split("\n")
    if len(lines) > MAX_SIGNATURES:
        raise ProofInvalid(_NOTE, f"{len(lines)} signature lines, more than {MAX_SIGNATURES}")
    return text, lines


def _parse_signature_line(line: str) -> tuple[str, bytes]:
    # signed-note "Signatures": "— <key name> base64(32-bit key ID || signature)".
    if not line.startswith(_SIG_PREFIX):
        raise ProofInvalid(_NOTE, f"signature line {line[:40]!r} does not start with an em dash")
    name, _, encoded = line[len(_SIG_PREFIX) :].partition(" ")
    blob = _b64_strict(encoded)
    if not _is_key_name(name) or blob is None or len(blob) <= KEY_ID_SIZE:
        raise ProofInvalid(_NOTE, f"signature line {line[:40]!r} is malformed")
    return name, blob


def _verify_ed25519(public_key: bytes, text: str, signature: bytes) -> None:
    # signed-note "Ed25519 signatures": RFC 8032 Ed25519 over the note text.
    if len(signature) != ED25519_SIGNATURE_SIZE:
        raise SignatureInvalid(_SIGNATURE, f"signature is {len(signature)} bytes, expected 64")
    try:
        VerifyKey(public_key).verify(text.encode("utf-8"), signature)
    except CryptoError as e:
        raise SignatureInvalid(_SIGNATURE, "Ed25519 signature does not verify") from e


# --- Parsing ------------------------------------------------------------------------------------


def parse_checkpoint(text: str) -> Checkpoint:
    """tlog-checkpoint "Note text": parse a note text strictly into a Checkpoint."""
    if not text.endswith("\n"):
        raise ProofInvalid(_NOTE, "note text does not end in a newline")
    lines = text[:-1].split("\n")
    if len(lines) < 3:
        raise ProofInvalid(_NOTE, f"{len(lines)} text lines, expected at least 3")
    if any(line == "" for line in lines):
        raise ProofInvalid(_NOTE, "an empty line in the checkpoint text")
    origin, size_line, root_line, *extensions = lines
    return _build(origin, _parse_size(size_line), _parse_root(root_line), tuple(extensions))


def _parse_size(line: str) -> int:
    # tlog-checkpoint: ASCII decimal with no leading zeroes (unless the tree is empty).
    if _DECIMAL.fullmatch(line) is None or len(line) > 20 or int(line) > MAX_TREE_SIZE:
        raise ProofInvalid(_NOTE, f"tree size {line[:40]!r} is not a canonical decimal uint64")
    return int(line)


def _parse_root(line: str) -> bytes:
    # tlog-checkpoint: the base64 encoding of the RFC 6962 root hash (32 bytes of SHA-256).
    root = _b64_strict(line)
    if root is None or len(root) != ROOT_SIZE:
        raise ProofInvalid(_NOTE, f"root hash {line[:60]!r} is not base64 of 32 bytes")
    return root


def _build(origin: str, size: int, root: bytes, extensions: tuple[str, ...]) -> Checkpoint:
    try:
        return Checkpoint(origin, size, root, extensions)
    except ValueError as e:
        raise ProofInvalid(_NOTE, str(e)) from e
