"""Errors shaped by what the worker does next; each class says what that is."""

from __future__ import annotations

from schemas.codes import FailureCode
from schemas.events import FieldError, StripeErrorInfo


class DebitWorkerError(Exception):
    """Base of every error the worker raises on purpose."""


class PermanentFailure(DebitWorkerError):
    """The debit will not happen: record it and emit ``DebitFailed``."""

    def __init__(
        self,
        code: FailureCode,
        message: str,
        *,
        stripe_error: StripeErrorInfo | None = None,
        field_errors: tuple[FieldError, ...] = (),
    ) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.stripe_error = stripe_error
        self.field_errors = field_errors


class TransientFailure(DebitWorkerError):
    """Nothing is decided: retry later with the *same* idempotency key."""

    def __init__(self, reason: str, *, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class OutcomeUnknown(TransientFailure):
    """Stripe may or may not have moved the money; only a repeat with the same key may
    decide, so it is retried like a transient failure and never reported as failed."""


class Unresolvable(OutcomeUnknown):
    """The outcome is unknown and repeating the call cannot tell: Stripe replays a stored
    error for the key, or the key is about to expire (or has). Escalated at once, never
    retried: an operator reconciles it."""


class OperatorActionNeeded(TransientFailure):
    """Stripe refused *us* (401/403): the key or its permissions are wrong; no money moved.
    Retried, and loudly reported, until an operator fixes it."""


class RefusalNotRecorded(TransientFailure):
    """An unauthorised command whose refusal could not be written (the ledger away). Never
    claimed, it goes back to its queue to be refused once the ledger answers; it is never
    dead-lettered as "attempts exhausted", and no replay can make it move money (it carries
    no valid producer signature)."""


class Unclaimed(DebitWorkerError):
    """A later attempt names a request the ledger does not hold: there is nothing to resume
    (later attempts are scheduled only for claimed requests)."""


class RequestBusy(TransientFailure):
    """Another worker holds this request's lease; look again when it has expired."""


class KeyInUse(TransientFailure):
    """Stripe is still running an earlier call with this request's idempotency key (409
    `idempotency_key_in_use`): one whose answer was lost, or one of a process that stalled
    past its lease. Nothing is decided yet and no second charge can come of it: a repeat with
    the same key, shortly, gets that call's result. Retried like any transient failure."""


class ChargePending(Unresolvable):
    """Stripe took the debit but reports its charge `pending`: money may yet move or not.
    A repeat of the call replays the same pending answer, so only reading the charge later
    (`charge_id`) can settle it; until then an operator reconciles it."""

    def __init__(self, reason: str, *, charge_id: str) -> None:
        super().__init__(reason)
        self.charge_id = charge_id
