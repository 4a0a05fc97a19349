"""What Stripe checks before it lets a platform debit a connected account.

Mirrors the "Debit connected accounts" requirements: the platform carries the account's
losses, platform and account are in one region (or a supported corridor), the currency is
the account's default, the amount is within the cap, and the balance covers it.
"""

from __future__ import annotations

from worker.sandbox import errors
from worker.sandbox.seed import AccountSeed

EU = frozenset((
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "IE", "IT", "LV",
    "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
))  # fmt: skip
CORRIDORS: dict[str, frozenset[str]] = {
    "US": frozenset({"HK"}),
    "GB": frozenset({"EU", "CH", "NO"}),
    "EU": frozenset({"GB", "CH", "NO"}),
    "AU": frozenset({"NZ"}),
    "NZ": frozenset({"AU"}),
    "CH": frozenset({"EU", "NO"}),
    "NO": frozenset({"EU", "CH"}),
}
DOMESTIC_GROUPS = (frozenset({"US", "CA"}), frozenset({"JP", "AU", "HK", "NZ"}))

# 100,000 USD expressed in each currency's minor units (approximate, deliberately low rates).
AMOUNT_CAP: dict[str, int] = {
    "usd": 10_000_000,
    "cad": 13_000_000,
    "hkd": 77_000_000,
    "jpy": 14_000_000,
    "eur": 9_000_000,
    "gbp": 7_500_000,
    "aud": 14_500_000,
    "nzd": 16_000_000,
    "chf": 8_500_000,
    "nok": 100_000_000,
}
MAX_AMOUNT_DIGITS = 99_999_999  # Stripe's eight-digit ceiling for any charge


def region(country: str) -> str:
    return "EU" if country in EU else country


def same_region(platform_country: str, account_country: str) -> bool:
    a, b = region(platform_country), region(account_country)
    if a == b:
        return True
    if {a, b} <= {"EU", "GB"}:  # SEPA: "EU and UK"
        return True
    return any(a in group and b in group for group in DOMESTIC_GROUPS)


def debit_allowed_between(platform_country: str, account_country: str) -> bool:
    if same_region(platform_country, account_country):
        return True
    return region(account_country) in CORRIDORS.get(region(platform_country), frozenset())


def platform_carries_losses(account: AccountSeed) -> bool:
    controller = account.controller
    if controller is not None and controller.losses is not None:
        return controller.losses.payments == "application"
    return account.type in {"express", "custom"}  # legacy accounts: the type decides


def check_debit(
    platform: AccountSeed, account: AccountSeed, available: int, amount: int, currency: str
) -> None:
    """Raise the refusal Stripe would give, or return if the debit may proceed."""
    if not platform_carries_losses(account):
        raise errors.invalid(
            f"Cannot debit {account.id}: account debits are only supported for connected "
            "accounts whose negative balances your platform is responsible for "
            "(controller.losses.payments = 'application').",
            param="source",
        )
    if not debit_allowed_between(platform.country, account.country):
        raise errors.invalid(
            f"Account debits from a platform in {platform.country} to a connected account in "
            f"{account.country} are not supported.",
            param="source",
        )
    if currency != account.default_currency:
        raise errors.invalid(
            f"The currency '{currency}' does not match the default currency "
            f"'{account.default_currency}' of the connected account {account.id}. Account "
            "debits must be made in the connected account's default currency.",
            param="currency",
        )
    cap = min(AMOUNT_CAP.get(currency, MAX_AMOUNT_DIGITS), MAX_AMOUNT_DIGITS)
    if amount > cap:
        raise errors.invalid(
            f"Amount must be no more than {cap} {currency} (100,000 USD or equivalent) for an "
            "account debit.",
            param="amount",
            code="amount_too_large",
        )
    if available < amount:
        raise errors.balance_insufficient(currency)
