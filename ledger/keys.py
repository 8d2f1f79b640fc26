"""Ed25519 keys: generation, key files, signing and verification of digests.

Key files hold the 32-byte seed as hex on one line and are created with mode 0600. Nothing here
prints a key, and no error message ever carries private key material.
"""

from __future__ import annotations

import os
import stat
import warnings
from dataclasses import dataclass
from pathlib import Path

from nacl.exceptions import CryptoError
from nacl.signing import SigningKey, VerifyKey

from .errors import KeyFileError, SignatureInvalid


class KeyFilePermissionWarning(UserWarning):
    """A private key file can be read by users other than its owner."""


@dataclass(frozen=True)
class KeyPair:
    """A signing key and its public half; `repr` never shows the private part."""

    signing_key: SigningKey

    @classmethod
    def generate(cls) -> KeyPair:
        return cls(SigningKey.generate())

    @property
    def public_hex(self) -> str:
        return self.signing_key.verify_key.encode().hex()

    def sign(self, message: bytes) -> bytes:
        return bytes(self.signing_key.sign(message).signature)

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public_hex})"


def write_key(path: Path, key: KeyPair) -> None:
    """Write a new key file with mode 0600; refuse to overwrite an existing one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError as e:
        raise KeyFileError(str(path), "already exists; refusing to overwrite a key") from e
    with os.fdopen(fd, "w") as f:
        f.write(bytes(key.signing_key).hex() + "\n")


def read_key(path: Path) -> KeyPair:
    """Read a key file; warn when others can read it."""
    try:
        mode = path.stat().st_mode
        text = path.read_text(encoding="ascii").strip()
    except FileNotFoundError as e:
        raise KeyFileError(str(path), "not found") from e
    except (OSError, UnicodeDecodeError) as e:
        raise KeyFileError(str(path), f"unreadable ({type(e).__name__})") from None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        warnings.warn(
            f"key file {path} is accessible by other users (mode {stat.S_IMODE(mode):o}); "
            "chmod 600 it",
            KeyFilePermissionWarning,
            stacklevel=2,
        )
    try:
        seed = bytes.fromhex(text)
    except ValueError:
        raise KeyFileError(str(path), "not a hex Ed25519 seed") from None
    if len(seed) != 32:
        raise KeyFileError(str(path), f"seed is {len(seed)} bytes, expected 32")
    return KeyPair(SigningKey(seed))


def parse_public_key(text: str) -> bytes:
    """A public key as 64 lowercase hex characters; raises ValueError otherwise."""
    if len(text) != 64 or text != text.lower():
        raise ValueError("public key must be 64 lowercase hex characters")
    return bytes.fromhex(text)


def verify_signature(public_hex: str, message: bytes, signature: bytes, what: str) -> None:
    """Raise SignatureInvalid unless `signature` is `public_hex`'s Ed25519 signature of message."""
    try:
        VerifyKey(bytes.fromhex(public_hex)).verify(message, signature)
    except (CryptoError, ValueError, TypeError) as e:
        raise SignatureInvalid(what, f"not signed by key {public_hex[:16]}…") from e
