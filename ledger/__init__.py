"""EDVEX's ledger: the append-only, signed event log of consent, lineage and usage."""

from .client import Client, Transport
from .errors import (
    ConflictError,
    IntegrityError,
    InvalidEvent,
    KeyFileError,
    LedgerError,
    PartialDuplicate,
    ProofInvalid,
    RuleViolation,
    SignatureInvalid,
    StoreError,
)
from .keys import KeyPair, read_key, write_key
from .store import AppendResult, Ledger, SignedBatch
from .values import uuid7

__all__ = [
    "AppendResult",
    "Client",
    "ConflictError",
    "IntegrityError",
    "InvalidEvent",
    "KeyFileError",
    "KeyPair",
    "Ledger",
    "LedgerError",
    "PartialDuplicate",
    "ProofInvalid",
    "RuleViolation",
    "SignatureInvalid",
    "SignedBatch",
    "StoreError",
    "Transport",
    "read_key",
    "uuid7",
    "write_key",
]
