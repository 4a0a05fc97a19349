"""What the worker knows about the platform, an account, a refund and a consent.

Plain values read from Stripe (or the ledger) by the gateway, handed to the policy, which
does no I/O of its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


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
    losses_payments: (
        str | None
    )  # controller.losses.payments: "application" | "stripe"; None if absent


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
