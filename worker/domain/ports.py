"""What the handler needs from the outside world, in the domain's types; real adapters and
test fakes both fit."""

from __future__ import annotations

from typing import Protocol

from worker.domain.types import (
    AccountFacts,
    DebitCharge,
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
