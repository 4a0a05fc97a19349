"""The decision: whether one DebitRequested may go to Stripe (Allowed), or the first Refusal.

Pure: every fact arrives as an argument, nothing here does I/O or reads the clock. The rules
run in `RULE_ORDER` and the first that fails decides, so a producer always gets one stable
reason. The tables they read are data an operator can override (rule_tables.py).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Final, TypeAlias

from schemas.codes import FailureCode
from schemas.commands import DebitReason, DebitRequested
from worker.domain.money import format_amount
from worker.domain.rule_tables import Availability, RuleTables
from worker.domain.types import AccountFacts, ConsentRecord, PlatformFacts, RefundFacts

# Legacy account types whose negative balances the platform carries.
PLATFORM_LIABLE_TYPES: Final = frozenset({"express", "custom"})


@dataclass(frozen=True, slots=True)
class Allowed:
    """Every rule holds: the debit may be sent to Stripe."""

    availability: Availability
    # Rules that did not apply to this debit (e.g. the refund rules for a platform charge,
    # consent when it is switched off, the balance pre-check when no balance was given).
    skipped: tuple[FailureCode, ...] = ()


@dataclass(frozen=True, slots=True)
class Refusal:
    """The first rule that failed: its code and a message fit to show the producer."""

    code: FailureCode
    message: str


Decision: TypeAlias = Allowed | Refusal


@dataclass(frozen=True, slots=True)
class _Case:
    command: DebitRequested
    platform: PlatformFacts
    account: AccountFacts
    consent: ConsentRecord | None
    refund: RefundFacts | None
    recovered_for_refund: int
    available_balance: int | None
    rules: RuleTables
    consent_required: bool
    now: datetime

    def money(self, amount: int) -> str:
        return format_amount(amount, self.command.currency)


def _always(_: _Case) -> bool:
    return True


def _is_recovery(case: _Case) -> bool:
    return case.command.reason is DebitReason.REFUND_RECOVERY


# --- the rules: each returns None when it holds, else the refusal message -----------------


def _platform_carries_losses(case: _Case) -> str | None:
    account = case.account
    if account.losses_payments == "application":
        return None
    if account.losses_payments is not None:
        return (
            f"Account {account.account_id} cannot be debited: its controller.losses.payments is "
            f"{account.losses_payments!r}, not 'application', so the platform is not liable for "
            "its negative balances. Bill it another way (e.g. Stripe Billing)."
        )
    if account.type in PLATFORM_LIABLE_TYPES:
        return None
    kind = f"its account type is {account.type!r}" if account.type else "it has no account type"
    return (
        f"Account {account.account_id} cannot be debited: it reports no "
        f"controller.losses.payments and {kind}; only accounts whose losses the platform carries "
        "(controller.losses.payments 'application', or legacy express and custom accounts) can "
        "be debited."
    )


def _consent_in_force(case: _Case) -> str | None:
    consent, account_id = case.consent, case.account.account_id
    if consent is None:
        return (
            f"No consent to be debited is on record for account {account_id}; record the "
            "account's signed agreement before debiting it."
        )
    if consent.active_at(case.now):
        return None
    if consent.granted_at > case.now:
        return (
            f"Account {account_id}'s consent to be debited takes effect at "
            f"{_when(consent.granted_at)}, after this decision ({_when(case.now)})."
        )
    revoked = _when(consent.revoked_at) if consent.revoked_at else "an unknown time"
    return f"Account {account_id} revoked its consent to be debited at {revoked}."


def _region_supported(case: _Case) -> str | None:
    rules, platform, account = case.rules, case.platform.country, case.account.country
    if rules.debit_allowed_between(platform, account):
        return None
    return (
        f"Account {case.account.account_id} is in {account} ({_region(rules, account)}) and the "
        f"platform is in {platform} ({_region(rules, platform)}): not the same region, and no "
        f"cross-border corridor lets a platform in {platform} debit accounts in {account}."
    )


def _currency_is_default(case: _Case) -> str | None:
    wanted, default = case.command.currency, case.account.default_currency
    if wanted.lower() == default.lower():
        return None
    return (
        f"The debit is in {wanted.upper()} but account {case.account.account_id}'s default "
        f"currency is {default.upper()}; Stripe only debits an account in its default currency."
    )


def _amount_within_cap(case: _Case) -> str | None:
    currency, amount = case.command.currency, case.command.amount
    cap = case.rules.cap_for(currency)
    if cap is None:
        return (
            f"No per-debit cap is configured for {currency.upper()}, so debits in it are refused "
            f"rather than guessed; the operator must add a reviewed cap for {currency.lower()!r} "
            "to the rule tables."
        )
    if amount <= cap:
        return None
    return (
        f"{case.money(amount)} is above the per-debit cap of {case.money(cap)} (about "
        "100,000 USD); split the debit."
    )


def _refund_known(case: _Case) -> str | None:
    if case.refund is not None:
        return None
    return f"Refund {case.command.refund}, which this recovery names, was not found."


# Refund statuses under which money has left, or is leaving, the platform for the refund.
RECOVERABLE_REFUND_STATUSES: Final = frozenset({"succeeded", "pending"})
REFUND_STATUS_REQUIRES_ACTION: Final = "requires_action"


def _refund_made(case: _Case) -> str | None:
    refund = case.refund
    if refund is None or refund.status in RECOVERABLE_REFUND_STATUSES:
        return None
    if refund.status == REFUND_STATUS_REQUIRES_ACTION:
        return None  # may still be made: refund_requires_action, later in the order
    return (
        f"Refund {refund.refund_id} has status {refund.status!r}: no money left the platform "
        "for it, so there is nothing to recover (only a succeeded or pending refund can be "
        "recovered)."
    )


def _refund_paid_this_account(case: _Case) -> str | None:
    refund, account_id = case.refund, case.command.account
    if refund is None:
        return None
    others = [(name, paid) for name, paid in refund.charge_accounts if paid != account_id]
    if not others:
        return None
    named = ", ".join(f"{name} {paid}" for name, paid in others)
    return (
        f"Refund {refund.refund_id} refunded charge {refund.charge_id}, which paid another "
        f"account ({named}), not {account_id} which this recovery debits; recover from the "
        "account the charge paid."
    )


def _refund_needs_no_action(case: _Case) -> str | None:
    refund = case.refund
    if refund is None or refund.status != REFUND_STATUS_REQUIRES_ACTION:
        return None
    return (
        f"Refund {refund.refund_id} still requires action (status 'requires_action'): no money "
        "has left the platform for it yet; send a new request once Stripe reports it pending "
        "or succeeded."
    )


def _refund_currency_matches(case: _Case) -> str | None:
    refund = case.refund
    if refund is None or refund.currency.lower() == case.command.currency.lower():
        return None
    return (
        f"Refund {refund.refund_id} was made in {refund.currency.upper()} but this recovery "
        f"debits {case.command.currency.upper()}; recover in {refund.currency.upper()}."
    )


def _recovery_within_refund(case: _Case) -> str | None:
    refund, amount = case.refund, case.command.amount
    if refund is None or case.recovered_for_refund + amount <= refund.amount:
        return None
    remaining = max(refund.amount - case.recovered_for_refund, 0)
    already = case.money(case.recovered_for_refund)
    if remaining == 0:
        return (
            f"Refund {refund.refund_id} of {case.money(refund.amount)} is already fully "
            f"recovered or being recovered ({already}); nothing remains to recover."
        )
    return (
        f"Recovering {case.money(amount)} for refund {refund.refund_id} of "
        f"{case.money(refund.amount)} would recover more than was refunded: {already} is "
        f"already recovered or in flight, so at most {case.money(remaining)} remains."
    )


def _balance_covers_amount(case: _Case) -> str | None:
    balance, amount = case.available_balance, case.command.amount
    if balance is None or balance >= amount:
        return None
    return (
        f"Account {case.account.account_id} has {case.money(balance)} available, less than the "
        f"{case.money(amount)} to debit; a debit may not make its balance negative."
    )


@dataclass(frozen=True, slots=True)
class _Rule:
    code: FailureCode
    description: str
    applies: Callable[[_Case], bool]
    holds: Callable[[_Case], str | None]


_RULES: Final = (
    _Rule(
        FailureCode.ACCOUNT_INELIGIBLE,
        "The platform carries the account's losses (controller.losses.payments is "
        "'application'; without a controller, a legacy express or custom account).",
        _always,
        _platform_carries_losses,
    ),
    _Rule(
        FailureCode.CONSENT_MISSING,
        "A consent record for the account is in force now (skipped when consent is not required).",
        lambda case: case.consent_required,
        _consent_in_force,
    ),
    _Rule(
        FailureCode.REGION_UNSUPPORTED,
        "Platform and account are in the same region, or a corridor leads from the "
        "platform's country to the account's.",
        _always,
        _region_supported,
    ),
    _Rule(
        FailureCode.CURRENCY_MISMATCH,
        "The debit's currency is the account's default currency.",
        _always,
        _currency_is_default,
    ),
    _Rule(
        FailureCode.AMOUNT_EXCEEDS_LIMIT,
        "The currency has a configured cap and the amount does not exceed it.",
        _always,
        _amount_within_cap,
    ),
    _Rule(
        FailureCode.REFUND_NOT_FOUND,
        "A refund recovery's refund exists.",
        _is_recovery,
        _refund_known,
    ),
    _Rule(
        FailureCode.REFUND_NOT_RECOVERABLE,
        "A refund recovery's refund has moved money or is moving it: its status is succeeded "
        "or pending (requires_action is left to refund_requires_action).",
        _is_recovery,
        _refund_made,
    ),
    _Rule(
        FailureCode.REFUND_ACCOUNT_MISMATCH,
        "Every account the refunded charge names as the one it paid (transfer_data.destination, "
        "destination, on_behalf_of) is the debited account (holds when it names none).",
        _is_recovery,
        _refund_paid_this_account,
    ),
    _Rule(
        FailureCode.REFUND_CURRENCY_MISMATCH,
        "A refund recovery debits the refund's currency.",
        _is_recovery,
        _refund_currency_matches,
    ),
    _Rule(
        FailureCode.REFUND_REQUIRES_ACTION,
        "A refund recovery's refund does not still require action.",
        _is_recovery,
        _refund_needs_no_action,
    ),
    _Rule(
        FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND,
        "A refund recovery plus what is already recovered or in flight for the refund does "
        "not exceed the refund.",
        _is_recovery,
        _recovery_within_refund,
    ),
    _Rule(
        FailureCode.INSUFFICIENT_BALANCE,
        "The account's available balance covers the amount (only when the optional balance "
        "pre-check supplied one).",
        lambda case: case.available_balance is not None,
        _balance_covers_amount,
    ),
)

# The documented order of the rules: the first that fails decides the refusal.
RULE_ORDER: Final[tuple[tuple[FailureCode, str], ...]] = tuple(
    (rule.code, rule.description) for rule in _RULES
)


def evaluate(
    command: DebitRequested,
    *,
    platform: PlatformFacts,
    account: AccountFacts,
    consent: ConsentRecord | None,
    refund: RefundFacts | None,
    recovered_for_refund: int,
    available_balance: int | None,
    rules: RuleTables,
    consent_required: bool,
    now: datetime,
) -> Decision:
    """Decide one debit: Allowed, or the Refusal of the first failing rule in RULE_ORDER.

    `refund` is the refund a refund_recovery names (None if Stripe does not know it, and
    for other reasons); `recovered_for_refund` is what earlier recoveries of that refund
    have taken or are taking, not counting this command. `available_balance` (minor units of
    the debit's currency) is None unless the balance pre-check is on.

    Facts that belong to another account or refund, a naive `now` or a negative recovered
    sum are caller bugs and raise ValueError rather than becoming a refusal.
    """
    case = _Case(
        command=command,
        platform=platform,
        account=account,
        consent=consent,
        refund=refund,
        recovered_for_refund=recovered_for_refund,
        available_balance=available_balance,
        rules=rules,
        consent_required=consent_required,
        now=now,
    )
    _check_inputs(case)
    skipped: list[FailureCode] = []
    for rule in _RULES:
        if not rule.applies(case):
            skipped.append(rule.code)
            continue
        message = rule.holds(case)
        if message is not None:
            return Refusal(rule.code, message)
    availability = rules.availability(platform.country, account.country)
    assert availability is not None  # the region rule held
    return Allowed(availability=availability, skipped=tuple(skipped))


def _check_inputs(case: _Case) -> None:
    command, account, consent, refund = case.command, case.account, case.consent, case.refund
    if account.account_id != command.account:
        raise ValueError(f"facts for {account.account_id} given for a debit of {command.account}")
    if consent is not None and consent.account_id != command.account:
        raise ValueError(f"consent of {consent.account_id} given for a debit of {command.account}")
    if refund is not None and refund.refund_id != command.refund:
        raise ValueError(f"refund {refund.refund_id} given for a debit naming {command.refund}")
    if case.recovered_for_refund < 0:
        raise ValueError(
            f"recovered_for_refund must not be negative, not {case.recovered_for_refund}"
        )
    if case.now.tzinfo is None or case.now.utcoffset() is None:
        raise ValueError("now must be timezone-aware")


def _when(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _region(rules: RuleTables, country: str) -> str:
    region = rules.region_of(country)
    return f"region {region}" if region else "in no domestic region"
