"""The values the ports speak, owned by the domain so that adapters depend on them, not the
reverse: facts read for the decision, a DebitCharge out, a Payment back, an OutboxEvent."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Final

from schemas.events import CloudEvent

IDEMPOTENCY_KEY_PREFIX: Final = "debit-worker:v1:"


def idempotency_key(request_id: str) -> str:
    """Derived from the request id only: every attempt of one request sends the same key."""
    return IDEMPOTENCY_KEY_PREFIX + request_id


@dataclass(frozen=True, slots=True)
class DebitCharge:
    """What is sent to Stripe for one debit."""

    request_id: str
    account: str
    amount: int
    currency: str
    reason: str
    refund: str | None
    description: str | None
    metadata: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class Payment:
    """A debit Stripe confirmed: the money asked for, settled."""

    id: str
    transfer: str | None
    balance_transaction: str | None
    created: datetime
    replayed: bool


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    """An event recorded with the outcome it announces, published after commit."""

    event_id: str
    request_id: str
    event_type: str
    routing_key: str
    body: str

    @classmethod
    def of(cls, event: CloudEvent, routing_key: str) -> OutboxEvent:
        return cls(
            event_id=event.id,
            request_id=event.subject,
            event_type=event.type,
            routing_key=routing_key,
            body=event.model_dump_json(),
        )


@dataclass(frozen=True, slots=True)
class DailyLimit:
    """What begin_attempt reserves against: this producer's rolling-day room in a currency."""

    producer: str
    currency: str
    limit: int


@dataclass(frozen=True, slots=True)
class PlatformFacts:
    account_id: str
    country: str  # ISO 3166-1 alpha-2, upper-case


@dataclass(frozen=True, slots=True)
class AccountFacts:
    account_id: str
    country: str  # ISO 3166-1 alpha-2, upper-case
    default_currency: str  # ISO 4217, lower-case
    type: str | None  # "express" | "custom" | "standard" | "none"; legacy signal
    # controller.losses.payments: "application" | "stripe"; None if absent
    losses_payments: str | None


@dataclass(frozen=True, slots=True)
class RefundFacts:
    refund_id: str
    amount: int  # minor units
    currency: str  # lower-case
    status: str  # Stripe's: "succeeded", "pending", "requires_action", "failed", "canceled"
    charge_id: str | None = None  # the refunded charge, if Stripe names one
    # (field, account id) for each field of the refunded charge that names the connected
    # account it paid: "transfer_data.destination", "destination", "on_behalf_of". Empty when
    # the charge names none (or Stripe did not expand it).
    charge_accounts: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    account_id: str
    agreement_ref: str  # where the signed agreement lives
    granted_at: datetime
    granted_by: str
    revoked_at: datetime | None = None
    revoked_by: str | None = None

    def active_at(self, moment: datetime) -> bool:
        if self.granted_at > moment:
            return False
        return self.revoked_at is None or self.revoked_at > moment


@dataclass(frozen=True, slots=True)
class ChargeSeen:
    """An account-debit charge (`py_…`) as Stripe's records show it now: what the
    reconciliation reads to settle a request and to prove a day."""

    id: str
    status: str  # Stripe's: "succeeded", "pending", "failed"
    paid: bool
    amount: int  # minor units
    currency: str  # lower-case
    account: str | None  # the debited connected account (the charge's `source`)
    transfer: str | None  # `source_transfer`: the tr_… on the connected account
    balance_transaction: str | None
    created: datetime  # UTC
    request_id: str | None  # metadata.request_id: the request that asked for it


@dataclass(frozen=True, slots=True)
class KeyedEvent:
    """A Stripe Event about a charge, with the idempotency key of the API request that
    caused it (None for events Stripe raised by itself)."""

    id: str
    type: str  # e.g. "charge.succeeded"
    created: datetime  # UTC
    idempotency_key: str | None
    charge_id: str | None  # data.object.id when data.object is a charge
