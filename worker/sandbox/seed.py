"""The sandbox's starting world: the platform, its connected accounts, the charges that were
refunded, and the refunds.

Read from YAML or JSON (`.json` parses as YAML too). `default_seed.yaml` beside this module
holds the ids the worker's demo and tests rely on.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

DEFAULT_SEED_PATH = Path(__file__).with_name("default_seed.yaml")

AccountType = Literal["express", "custom", "standard", "none"]
LossesPayer = Literal["application", "stripe"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Losses(_Frozen):
    payments: LossesPayer


class Controller(_Frozen):
    """`account.controller` as newer API versions return it; `losses` is what debits need."""

    type: Literal["application", "account"] = "application"
    is_controller: bool = True
    losses: Losses | None = None
    fees_payer: str | None = None
    stripe_dashboard: Literal["express", "full", "none"] | None = None
    requirement_collection: Literal["application", "stripe"] | None = None


class AccountSeed(_Frozen):
    id: str = Field(pattern=r"^acct_[A-Za-z0-9]+$")
    country: str = Field(pattern=r"^[A-Z]{2}$")
    default_currency: str = Field(pattern=r"^[a-z]{3}$")
    type: AccountType = "express"
    controller: Controller | None = None
    available: dict[str, int] = Field(default_factory=dict)
    pending: dict[str, int] = Field(default_factory=dict)
    charges_enabled: bool = True
    payouts_enabled: bool = True
    email: str | None = None
    business_name: str | None = None
    created: int = 1_700_000_000

    @field_validator("available", "pending")
    @classmethod
    def _non_negative_lower_case(cls, value: dict[str, int]) -> dict[str, int]:
        for currency, amount in value.items():
            if currency != currency.lower() or len(currency) != 3:
                raise ValueError(f"currency {currency!r} must be a lower-case ISO 4217 code")
            if amount < 0:
                raise ValueError(f"balance {currency} {amount} must not be negative")
        return value


class ChargeSeed(_Frozen):
    """A sale made through the platform and later refunded: what `refund.charge` names. The
    account it paid, if any, is `transfer_data.destination` (a destination charge) and/or
    `on_behalf_of`."""

    id: str = Field(pattern=r"^(ch|py)_[A-Za-z0-9]+$")
    amount: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    destination: str | None = Field(None, pattern=r"^acct_[A-Za-z0-9]+$")
    on_behalf_of: str | None = Field(None, pattern=r"^acct_[A-Za-z0-9]+$")
    description: str | None = None
    created: int = 1_700_000_000
    metadata: dict[str, str] = Field(default_factory=dict)


class RefundSeed(_Frozen):
    id: str = Field(pattern=r"^re_[A-Za-z0-9]+$")
    amount: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    status: Literal["pending", "requires_action", "succeeded", "failed", "canceled"] = "succeeded"
    charge: str | None = None
    reason: str | None = None
    failure_reason: str | None = None  # served only with status failed
    created: int = 1_700_000_000
    metadata: dict[str, str] = Field(default_factory=dict)


class Seed(_Frozen):
    platform: AccountSeed
    accounts: tuple[AccountSeed, ...] = ()
    charges: tuple[ChargeSeed, ...] = ()
    refunds: tuple[RefundSeed, ...] = ()

    @model_validator(mode="after")
    def _refunds_name_seeded_charges(self) -> Seed:
        charges = {charge.id: charge for charge in self.charges}
        for refund in self.refunds:
            if refund.charge is None:
                continue
            charge = charges.get(refund.charge)
            if charge is None:
                raise ValueError(
                    f"refund {refund.id} names charge {refund.charge}, which is not under charges"
                )
            if charge.currency != refund.currency:
                raise ValueError(
                    f"refund {refund.id} is in {refund.currency} but its charge {charge.id} is in "
                    f"{charge.currency}"
                )
        return self


def load_seed(path: Path | None = None) -> Seed:
    """Parse a seed file; `None` means the built-in default seed."""
    source = path if path is not None else DEFAULT_SEED_PATH
    with source.open(encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    return Seed.model_validate(raw)
