"""What the handler needs from the outside world; real adapters and test fakes both fit."""

from __future__ import annotations

from typing import Protocol

from worker.facts import AccountFacts, PlatformFacts, RefundFacts
from worker.ledger import OutboxEvent
from worker.stripe_gateway import DebitCharge, Payment


class StripePort(Protocol):
    def platform(self) -> PlatformFacts: ...
    def account(self, account_id: str) -> AccountFacts: ...
    def refund(self, refund_id: str) -> RefundFacts: ...
    def available_balance(self, account_id: str, currency: str) -> int: ...
    def create_debit(self, charge: DebitCharge) -> Payment: ...


class PublishFailed(Exception):
    """The broker did not confirm the event; it stays in the outbox for the relay."""


class EventPublisher(Protocol):
    def publish(self, event: OutboxEvent) -> None:
        """Publish durably (broker confirmed) or raise PublishFailed."""


class Outbound(Protocol):
    def send(self, row_id: int, event: OutboxEvent) -> None:
        """Publish the event of outbox row `row_id` later and mark the row sent once the
        broker confirmed it; never raises (what fails stays unsent for the relay)."""
