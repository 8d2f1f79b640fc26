"""The one error root of EDVEX and its kinds (DESIGN.md, "Bad input").

Every error builds its own message from the values it carries, so that the message always names
what was found and what was expected. None of these ever carries private key material.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Root of every error the ledger and settlement raise on purpose."""


class InvalidEvent(LedgerError):
    """An event or batch is malformed: a field has the wrong type, form or range."""

    def __init__(self, event_id: str | None, field: str, reason: str) -> None:
        self.event_id = event_id
        self.field = field
        self.reason = reason
        where = f"event {event_id!r}" if event_id is not None else "event"
        super().__init__(f"{where}: field {field!r}: {reason}")


class RuleViolation(LedgerError):
    """A well-formed event breaks a rule of DESIGN.md's event table at its point in the log."""

    def __init__(self, event_id: str, field: str, rule: str, detail: str = "") -> None:
        self.event_id = event_id
        self.field = field
        self.rule = rule
        self.detail = detail
        tail = f" ({detail})" if detail else ""
        super().__init__(f"event {event_id!r}: field {field!r}: rule {rule!r} broken{tail}")


class SignatureInvalid(LedgerError):
    """A batch, checkpoint or statement signature does not verify under the expected key."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"{what}: signature invalid ({detail})")


class ConflictError(LedgerError):
    """An event id was resubmitted with content that differs from the stored event."""

    def __init__(self, event_id: str, seq: int, got: str, expected: str) -> None:
        self.event_id = event_id
        self.seq = seq
        super().__init__(
            f"event {event_id!r}: field 'id': rule 'idempotent-resubmission' broken "
            f"(already at seq {seq} with hash {expected}, got hash {got})"
        )


class PartialDuplicate(LedgerError):
    """Some, not all, events of a signed batch are already in the log.

    The batch signature covers every event of the batch, so the ledger cannot store the new ones
    alone; the signer drops the known ids and signs the rest (the SDK does so by itself).
    """

    def __init__(self, known: dict[str, int]) -> None:
        self.known = known
        first = next(iter(known))
        super().__init__(
            f"event {first!r}: field 'id': {len(known)} event(s) of this batch are already "
            "in the log; re-sign the batch without them"
        )


class IntegrityError(LedgerError):
    """The stored log does not match what its hashes, signatures or tree say it must be."""

    def __init__(self, seq: int | None, what: str, detail: str) -> None:
        self.seq = seq
        self.what = what
        self.detail = detail
        where = f"seq {seq}" if seq is not None else "log"
        super().__init__(f"{where}: {what} ({detail})")


class StoreError(LedgerError):
    """The database refused or failed an operation (translated from the driver)."""


class KeyFileError(LedgerError):
    """A key file is missing, unreadable or malformed. Never carries the key itself."""

    def __init__(self, path: str, reason: str) -> None:
        self.path = path
        super().__init__(f"key file {path}: {reason}")


class ProofInvalid(LedgerError):
    """An inclusion or consistency proof, or a checkpoint note, does not verify."""

    def __init__(self, what: str, detail: str) -> None:
        self.what = what
        self.detail = detail
        super().__init__(f"{what} does not verify ({detail})")
