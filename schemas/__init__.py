"""The Debit Worker message contract, importable by producers without the worker."""

from schemas.codes import CATALOGUE, CodeInfo, FailureCode
from schemas.commands import DebitReason, DebitRequested
from schemas.events import (
    CloudEvent,
    DebitEvent,
    DebitFailed,
    DebitFailedEvent,
    DebitSucceeded,
    DebitSucceededEvent,
    FieldError,
    StripeErrorInfo,
    event_id,
    failed_event,
    succeeded_event,
)

__all__ = [
    "CATALOGUE",
    "CloudEvent",
    "CodeInfo",
    "DebitEvent",
    "DebitFailed",
    "DebitFailedEvent",
    "DebitReason",
    "DebitRequested",
    "DebitSucceeded",
    "DebitSucceededEvent",
    "FailureCode",
    "FieldError",
    "StripeErrorInfo",
    "event_id",
    "failed_event",
    "succeeded_event",
]
