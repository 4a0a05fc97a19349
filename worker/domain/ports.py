"""What the handler needs from the outside world, in the domain's types; real adapters and
test fakes both fit."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Protocol

from worker.domain.types import (
    AccountFacts,
    ChargeSeen,
    DebitCharge,
    KeyedEvent,
    OutboxEvent,
    Payment,
    PlatformFacts,
    RefundFacts,
)


class StripePort(Protocol):
    def platform(self) -> PlatformFacts: ...
    def account(self, account_id: str) -> AccountFacts: ...
    def refund(self, refund_id: str) -> RefundFacts: ...
    def available_balance(self, account_id: str, currency: str) -> int: ...
    def create_debit(self, charge: DebitCharge) -> Payment: ...


class StripeRecords(Protocol):
    """Stripe's own records, read to settle unknown outcomes and to prove a day. Every read
    takes a low-priority token of the rate budget (debits' own calls go first)."""

    def charge(self, charge_id: str) -> ChargeSeen:
        """One charge as it is now. Raises PermanentFailure when Stripe has no such charge,
        TransientFailure when it did not answer."""

    def debit_charges(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[ChargeSeen]:
        """Every account-debit charge created in [created_from, created_until), newest
        first, page by page (100 a page) with `starting_after`."""

    def charge_events(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[KeyedEvent]:
        """Every charge.* Event created in [created_from, created_until), newest first."""

    @property
    def list_requests(self) -> int:
        """List pages read so far by this gateway (for the cost of a reconciliation)."""


class PublishFailed(Exception):
    """The broker did not confirm the event; it stays in the outbox for the relay."""


class EventPublisher(Protocol):
    """The outbox relay's way out: one event at a time, confirmed before it returns."""

    def publish(self, event: OutboxEvent) -> None:
        """Publish durably (broker confirmed) or raise PublishFailed."""


class Outbound(Protocol):
    """The handler's one way out for the events it recorded."""

    def send(self, row_id: int, event: OutboxEvent) -> None:
        """Publish the event of outbox row `row_id` and mark the row sent once the broker
        confirmed it (now or later); never raises: what fails stays unsent for the relay."""
