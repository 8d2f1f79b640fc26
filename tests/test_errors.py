"""One error root: every error the ledger and settlement raise on purpose is a LedgerError, and
each builds its message from the values it carries."""

from __future__ import annotations

import pytest

from ledger import errors
from settlement.run import SettlementConflict
from settlement.verify import StatementMismatch


@pytest.mark.parametrize(
    "kind",
    [errors.InvalidEvent, errors.RuleViolation, errors.SignatureInvalid, errors.ConflictError,
     errors.PartialDuplicate, errors.IntegrityError, errors.StoreError, errors.KeyFileError,
     errors.ProofInvalid, SettlementConflict, StatementMismatch],
)  # fmt: skip
def test_every_error_is_a_ledger_error(kind: type[Exception]) -> None:
    assert issubclass(kind, errors.LedgerError)


def test_messages_name_what_was_found() -> None:
    rule = errors.RuleViolation("ev-1", "body.grant", "grant-live", "revoked at seq 9")
    assert (
        str(rule) == "event 'ev-1': field 'body.grant': rule 'grant-live' broken (revoked at seq 9)"
    )
    assert (rule.event_id, rule.field, rule.rule) == ("ev-1", "body.grant", "grant-live")
    bad = errors.InvalidEvent("ev-2", "body.units", "must not be negative")
    assert str(bad) == "event 'ev-2': field 'body.units': must not be negative"
    broken = errors.IntegrityError(15, "event hash", "stored ab…, recomputed cd…")
    assert str(broken) == "seq 15: event hash (stored ab…, recomputed cd…)" and broken.seq == 15
    conflict = errors.ConflictError("ev-3", 7, "aa", "bb")
    assert "already at seq 7" in str(conflict) and conflict.seq == 7
    assert str(errors.KeyFileError("k/x.key", "not found")) == "key file k/x.key: not found"
