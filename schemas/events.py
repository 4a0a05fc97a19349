"""The events the worker emits, and the CloudEvents 1.0 envelope they travel in."""

from __future__ import annotations

import uuid
from typing import Annotated, Final, Literal

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from schemas.codes import FailureCode
from schemas.commands import AccountId, Amount, Currency, DebitReason, RefundId, RequestId

SUCCEEDED_TYPE: Final = "io.debit-worker.debit.succeeded.v1"
FAILED_TYPE: Final = "io.debit-worker.debit.failed.v1"
DEFAULT_SOURCE: Final = "urn:debit-worker"
# Fixed forever: event ids are uuid5 names in this namespace, so they are reproducible.
EVENT_ID_NAMESPACE: Final = uuid.UUID("8c1d6a52-4c36-5b52-9f3e-2f7a1b0d5e61")

# The $id base of the committed JSON Schema files (schemas/json/, `python -m schemas.generate`).
SCHEMA_BASE_URI: Final = "https://debit-worker.dev/schemas/"
SUCCEEDED_DATASCHEMA: Final = f"{SCHEMA_BASE_URI}debit-succeeded.v1.json"
FAILED_DATASCHEMA: Final = f"{SCHEMA_BASE_URI}debit-failed.v1.json"

# Events are read by consumers built against an older v1: they must tolerate fields added
# later within v1 (tolerant reader), so unknown fields are ignored, not refused. In the JSON
# Schema every field is required because the worker always writes every field (null if unset).
_EVENT_CONFIG = ConfigDict(
    frozen=True, extra="ignore", json_schema_serialization_defaults_required=True
)


class DebitSucceeded(BaseModel):
    """The money moved: Stripe created the payment on the platform."""

    model_config = ConfigDict(**_EVENT_CONFIG, title="DebitSucceeded")

    request_id: RequestId
    account: AccountId
    amount: Amount
    currency: Currency
    reason: DebitReason
    refund: RefundId | None = None
    description: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    payment: Annotated[str, StringConstraints(pattern=r"^py_[A-Za-z0-9]+$")] = Field(
        description="Stripe's id of the Payment created on the platform."
    )
    transfer: Annotated[str, StringConstraints(pattern=r"^tr_[A-Za-z0-9]+$")] | None = Field(
        default=None, description="The Transfer that took the money out of the account."
    )
    balance_transaction: Annotated[str, StringConstraints(pattern=r"^txn_[A-Za-z0-9]+$")] | None = (
        Field(default=None, description="The platform's balance transaction for the payment.")
    )
    succeeded_at: AwareDatetime = Field(description="When Stripe created the payment.")


class StripeErrorInfo(BaseModel):
    """What Stripe said when it refused; present only when Stripe is the one that refused."""

    model_config = _EVENT_CONFIG

    type: str = Field(description="Stripe's error type, e.g. invalid_request_error.")
    code: str | None = Field(
        default=None, description="Stripe's error code, e.g. balance_insufficient."
    )
    decline_code: str | None = None
    message: str | None = None
    request_id: str | None = Field(default=None, description="Stripe's Request-Id, for support.")


class FieldError(BaseModel):
    """One reason a command failed validation."""

    model_config = _EVENT_CONFIG

    field: str = Field(description="Dotted path of the offending field; empty for the whole body.")
    message: str


class DebitFailed(BaseModel):
    """No money moved, and none will for this request_id."""

    model_config = ConfigDict(**_EVENT_CONFIG, title="DebitFailed")

    request_id: RequestId
    account: str | None = Field(
        default=None, description="As read from the command, if it could be."
    )
    amount: int | None = None
    currency: str | None = None
    reason: str | None = None
    refund: str | None = None
    code: FailureCode
    message: str = Field(description="For humans; do not parse it, use `code`.")
    retry_may_succeed: bool = Field(
        description="Whether a *new* request for the same debit could succeed later "
        "(e.g. after the balance grows or consent is recorded)."
    )
    field_errors: list[FieldError] = Field(default_factory=list)
    stripe_error: StripeErrorInfo | None = None
    failed_at: AwareDatetime


def event_id(source: str, request_id: str, event_type: str, variant: str = "") -> str:
    """Same request and outcome → same id, so consumers can dedupe on (source, id).

    A request has one outcome; `variant` distinguishes the failures that are *not* its
    outcome (a conflicting or invalid duplicate of the request id), so that deduplication
    never swallows them, nor they the real outcome.
    """
    name = f"{source}\n{request_id}\n{event_type}"
    if variant:
        name += f"\n{variant}"
    return str(uuid.uuid5(EVENT_ID_NAMESPACE, name))


class CloudEvent(BaseModel):
    """CloudEvents 1.0, structured mode (application/cloudevents+json)."""

    model_config = ConfigDict(**_EVENT_CONFIG, title="CloudEvent")

    specversion: Literal["1.0"] = "1.0"
    id: str = Field(min_length=1, description="Unique per source; dedupe on (source, id).")
    source: str = Field(min_length=1)
    type: str = Field(min_length=1)
    subject: str = Field(min_length=1, description="The request_id the event is about.")
    time: AwareDatetime
    datacontenttype: Literal["application/json"] = "application/json"
    dataschema: str | None = None
    data: dict[str, object]


class DebitSucceededEvent(CloudEvent):
    model_config = ConfigDict(title="DebitSucceededEvent")
    type: Literal["io.debit-worker.debit.succeeded.v1"] = SUCCEEDED_TYPE
    data: DebitSucceeded  # type: ignore[assignment]


class DebitFailedEvent(CloudEvent):
    model_config = ConfigDict(title="DebitFailedEvent")
    type: Literal["io.debit-worker.debit.failed.v1"] = FAILED_TYPE
    data: DebitFailed  # type: ignore[assignment]


def succeeded_event(data: DebitSucceeded, *, source: str = DEFAULT_SOURCE) -> DebitSucceededEvent:
    return DebitSucceededEvent(
        id=event_id(source, data.request_id, SUCCEEDED_TYPE),
        source=source,
        subject=data.request_id,
        time=data.succeeded_at,
        dataschema=SUCCEEDED_DATASCHEMA,
        data=data,
    )


def failed_event(
    data: DebitFailed, *, source: str = DEFAULT_SOURCE, variant: str = ""
) -> DebitFailedEvent:
    return DebitFailedEvent(
        id=event_id(source, data.request_id, FAILED_TYPE, variant),
        source=source,
        subject=data.request_id,
        time=data.failed_at,
        dataschema=FAILED_DATASCHEMA,
        data=data,
    )


DebitEvent = DebitSucceededEvent | DebitFailedEvent
