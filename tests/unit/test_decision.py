"""The debit policy: each rule on its own, the documented order, and the messages producers see.

A `Scenario` holds every input of `evaluate` and starts from a debit that passes every rule
(a refund recovery with consent required and the balance pre-check on, so all twelve rules
run). Each test breaks what it is about and nothing else.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from schemas.codes import FailureCode
from schemas.commands import DebitReason, DebitRequested
from worker.domain.decision import RULE_ORDER, Allowed, Decision, Refusal, evaluate
from worker.domain.money import ZERO_DECIMAL_CURRENCIES
from worker.domain.rule_tables import DEFAULT_CAPS, Availability, RuleTables
from worker.domain.types import AccountFacts, ConsentRecord, PlatformFacts, RefundFacts

NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
ACCOUNT_ID = "acct_1Debtor"
REFUND_ID = "re_1Refunded"
USD_CAP = 10_000_000
PLENTY = 50_000_000  # 500,000.00 USD: more than any cap
DEFAULT_RULES = RuleTables()
US_PLATFORM = PlatformFacts(account_id="acct_1Platform", country="US")


# --- builders -----------------------------------------------------------------------------


def a_command(**changes: object) -> DebitRequested:
    fields: dict[str, object] = {
        "request_id": "req-1",
        "account": ACCOUNT_ID,
        "amount": 2500,
        "currency": "usd",
        "reason": DebitReason.REFUND_RECOVERY,
        "refund": REFUND_ID,
    }
    fields.update(changes)
    return DebitRequested.model_validate(fields)


def a_platform_charge(**changes: object) -> DebitRequested:
    return a_command(reason=DebitReason.PLATFORM_CHARGE, refund=None, **changes)


def an_account(**changes: Any) -> AccountFacts:
    account = AccountFacts(
        account_id=ACCOUNT_ID,
        country="US",
        default_currency="usd",
        type="express",
        losses_payments="application",
    )
    return replace(account, **changes)


def a_consent(**changes: Any) -> ConsentRecord:
    consent = ConsentRecord(
        account_id=ACCOUNT_ID,
        agreement_ref="agreements/acct_1Debtor.pdf",
        granted_at=NOW - timedelta(days=30),
        granted_by="ops@example.com",
    )
    return replace(consent, **changes)


def a_refund(**changes: Any) -> RefundFacts:
    refund = RefundFacts(
        refund_id=REFUND_ID,
        amount=PLENTY,
        currency="usd",
        status="succeeded",
        charge_id="ch_1Sale",
        charge_accounts=(("transfer_data.destination", ACCOUNT_ID),),
    )
    return replace(refund, **changes)


def _refund_changed(scenario: Scenario, **changes: Any) -> Scenario:
    return replace(scenario, refund=scenario.refund and replace(scenario.refund, **changes))


@dataclass(frozen=True)
class Scenario:
    """Every input of `evaluate`; the defaults pass every rule."""

    command: DebitRequested = field(default_factory=a_command)
    platform: PlatformFacts = US_PLATFORM
    account: AccountFacts = field(default_factory=an_account)
    consent: ConsentRecord | None = field(default_factory=a_consent)
    refund: RefundFacts | None = field(default_factory=a_refund)
    recovered_for_refund: int = 0
    available_balance: int | None = PLENTY
    rules: RuleTables = DEFAULT_RULES
    consent_required: bool = True
    now: datetime = NOW

    def decide(self) -> Decision:
        return evaluate(
            self.command,
            platform=self.platform,
            account=self.account,
            consent=self.consent,
            refund=self.refund,
            recovered_for_refund=self.recovered_for_refund,
            available_balance=self.available_balance,
            rules=self.rules,
            consent_required=self.consent_required,
            now=self.now,
        )

    def refusal(self) -> Refusal:
        decision = self.decide()
        assert isinstance(decision, Refusal), f"expected a refusal, got {decision}"
        return decision

    def with_command(self, **changes: object) -> Scenario:
        fields = self.command.model_dump()
        fields.update(changes)
        return replace(self, command=DebitRequested.model_validate(fields))

    def with_account(self, **changes: Any) -> Scenario:
        return replace(self, account=replace(self.account, **changes))


def where_platform_and_account_are_in(platform: str, account: str) -> Scenario:
    return Scenario(
        platform=PlatformFacts(account_id="acct_1Platform", country=platform),
        account=an_account(country=account),
    )


def amount_scenario(amount: int, currency: str) -> Scenario:
    """A platform charge in `currency`, the account's default, with nothing else in the way."""
    return Scenario(
        command=a_platform_charge(amount=amount, currency=currency),
        account=an_account(default_currency=currency),
        refund=None,
        available_balance=None,
    )


# One way to break each rule, each independent of the others.
BREAKERS: dict[FailureCode, Callable[[Scenario], Scenario]] = {
    FailureCode.ACCOUNT_INELIGIBLE: lambda s: s.with_account(losses_payments="stripe"),
    FailureCode.CONSENT_MISSING: lambda s: replace(s, consent=None),
    FailureCode.REGION_UNSUPPORTED: lambda s: s.with_account(country="CA"),
    FailureCode.CURRENCY_MISMATCH: lambda s: s.with_account(default_currency="eur"),
    FailureCode.AMOUNT_EXCEEDS_LIMIT: lambda s: s.with_command(amount=USD_CAP + 1),
    FailureCode.REFUND_NOT_FOUND: lambda s: replace(s, refund=None),
    FailureCode.REFUND_NOT_RECOVERABLE: lambda s: _refund_changed(s, status="failed"),
    FailureCode.REFUND_ACCOUNT_MISMATCH: lambda s: _refund_changed(
        s, charge_accounts=(("on_behalf_of", "acct_1Other"),)
    ),
    FailureCode.REFUND_CURRENCY_MISMATCH: lambda s: _refund_changed(s, currency="eur"),
    # One status cannot break two rules: a refund already failed stays failed.
    FailureCode.REFUND_REQUIRES_ACTION: lambda s: (
        _refund_changed(s, status="requires_action")
        if s.refund is not None and s.refund.status == "succeeded"
        else s
    ),
    FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND: lambda s: replace(s, recovered_for_refund=PLENTY),
    FailureCode.INSUFFICIENT_BALANCE: lambda s: replace(s, available_balance=0),
}
RULES_DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"


def documented_order() -> list[FailureCode]:
    """The failure codes of docs/rules.md's order table ("| 1 | `account_ineligible` | …"),
    in its order: the order operators and producers are told."""
    rows = re.findall(r"^\| (\d+) \| `([a-z_]+)` \|", RULES_DOC.read_text(encoding="utf-8"), re.M)
    assert [int(number) for number, _ in rows] == list(range(1, len(rows) + 1)), rows
    return [FailureCode(code) for _, code in rows]


DOCUMENTED_ORDER = documented_order()


def broken(*codes: FailureCode) -> Scenario:
    """The passing scenario with each given rule broken (in the documented order, so that a
    missing refund stays missing)."""
    scenario = Scenario()
    for code in sorted(codes, key=DOCUMENTED_ORDER.index):
        scenario = BREAKERS[code](scenario)
    return scenario


# --- the whole policy ---------------------------------------------------------------------


def test_a_debit_that_meets_every_rule_is_allowed_with_nothing_skipped() -> None:
    # Given a refund recovery meeting all twelve rules, When evaluated, Then it is allowed
    assert Scenario().decide() == Allowed(availability=Availability.DOMESTIC, skipped=())


def test_rules_that_do_not_apply_are_reported_as_skipped() -> None:
    # Given a platform charge, consent switched off and no balance pre-check
    scenario = replace(amount_scenario(2500, "usd"), consent=None, consent_required=False)
    # When evaluated, Then it is allowed and says which rules did not run
    assert scenario.decide() == Allowed(
        availability=Availability.DOMESTIC,
        skipped=(
            FailureCode.CONSENT_MISSING,
            FailureCode.REFUND_NOT_FOUND,
            FailureCode.REFUND_NOT_RECOVERABLE,
            FailureCode.REFUND_ACCOUNT_MISMATCH,
            FailureCode.REFUND_CURRENCY_MISMATCH,
            FailureCode.REFUND_REQUIRES_ACTION,
            FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND,
            FailureCode.INSUFFICIENT_BALANCE,
        ),
    )


def test_the_exported_rule_order_is_the_documented_one() -> None:
    # Given RULE_ORDER and the order table of docs/rules.md
    # Then its codes are the documented ones, in that order, and each has a description
    assert [code for code, _ in RULE_ORDER] == DOCUMENTED_ORDER
    assert set(DOCUMENTED_ORDER) == set(BREAKERS), "every documented rule is broken on its own"
    assert all(description.strip() for _, description in RULE_ORDER)


@pytest.mark.parametrize("code", DOCUMENTED_ORDER, ids=[str(c) for c in DOCUMENTED_ORDER])
def test_each_rule_refuses_on_its_own(code: FailureCode) -> None:
    # Given a debit that breaks exactly one rule, When evaluated, Then that rule's code
    assert broken(code).refusal().code is code


@pytest.mark.parametrize(
    "index", range(len(DOCUMENTED_ORDER)), ids=[str(c) for c in DOCUMENTED_ORDER]
)
def test_a_rule_wins_over_every_later_failing_rule(index: int) -> None:
    # Given a debit breaking one rule and every rule after it
    scenario = broken(*DOCUMENTED_ORDER[index:])
    # When evaluated, Then the earliest broken rule decides
    assert scenario.refusal().code is DOCUMENTED_ORDER[index]


@given(st.sets(st.sampled_from(DOCUMENTED_ORDER), min_size=1))
def test_the_first_failing_rule_in_the_documented_order_wins(codes: set[FailureCode]) -> None:
    # Given a debit breaking any combination of rules
    scenario = broken(*codes)
    # When evaluated, Then the refusal is the earliest of them in RULE_ORDER
    expected = next(code for code in DOCUMENTED_ORDER if code in codes)
    assert scenario.refusal().code is expected


# --- 1. account_ineligible ----------------------------------------------------------------

ELIGIBILITY = [
    ("application", "express", True),
    ("application", "standard", True),  # the controller wins over the legacy type
    ("application", None, True),
    (None, "express", True),
    (None, "custom", True),
    ("stripe", "express", False),  # Stripe carries the losses: the type does not matter
    ("stripe", None, False),
    (None, "standard", False),
    (None, "none", False),
    (None, None, False),
]


@pytest.mark.parametrize(
    ("losses", "account_type", "allowed"),
    ELIGIBILITY,
    ids=[f"losses={losses}-type={kind}" for losses, kind, _ in ELIGIBILITY],
)
def test_only_accounts_whose_losses_the_platform_carries_can_be_debited(
    losses: str | None, account_type: str | None, allowed: bool
) -> None:
    # Given an account with this controller and legacy type
    scenario = Scenario().with_account(losses_payments=losses, type=account_type)
    # When evaluated, Then it is allowed only when the platform carries its losses
    decision = scenario.decide()
    if allowed:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is FailureCode.ACCOUNT_INELIGIBLE
        assert ACCOUNT_ID in decision.message


def test_an_ineligible_account_is_told_why() -> None:
    # Given a Standard account whose losses Stripe carries, When evaluated
    message = Scenario().with_account(losses_payments="stripe", type="standard").refusal().message
    # Then the message names the account and the losses setting
    assert "acct_1Debtor" in message
    assert "controller.losses.payments is 'stripe'" in message


# --- 2. consent_missing -------------------------------------------------------------------

CONSENTS = [
    ("none-on-record", None, False),
    ("granted-a-month-ago", a_consent(), True),
    ("granted-exactly-now", a_consent(granted_at=NOW), True),
    ("not-yet-granted", a_consent(granted_at=NOW + timedelta(seconds=1)), False),
    ("revoked-before-now", a_consent(revoked_at=NOW - timedelta(days=1)), False),
    ("revoked-exactly-now", a_consent(revoked_at=NOW), False),
    ("revoked-after-now", a_consent(revoked_at=NOW + timedelta(days=1)), True),
]


@pytest.mark.parametrize(
    ("consent", "allowed"), [c[1:] for c in CONSENTS], ids=[c[0] for c in CONSENTS]
)
def test_consent_must_be_in_force_at_the_moment_of_the_decision(
    consent: ConsentRecord | None, allowed: bool
) -> None:
    # Given consent is required and this consent record
    scenario = replace(Scenario(), consent=consent)
    # When evaluated at NOW
    decision = scenario.decide()
    # Then only a consent granted and not yet revoked at NOW lets the debit through
    if allowed:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is FailureCode.CONSENT_MISSING


@pytest.mark.parametrize("consent", [c[1] for c in CONSENTS], ids=[c[0] for c in CONSENTS])
def test_consent_is_not_checked_when_switched_off(consent: ConsentRecord | None) -> None:
    # Given consent is not required, When evaluated with any consent record or none
    decision = replace(Scenario(), consent=consent, consent_required=False).decide()
    # Then the debit is allowed
    assert isinstance(decision, Allowed)


@pytest.mark.parametrize(
    ("consent", "fragment"),
    [
        (None, "No consent to be debited is on record for account acct_1Debtor"),
        (
            a_consent(granted_at=NOW + timedelta(hours=1)),
            "takes effect at 2026-11-15T13:00:00+00:00, after this decision",
        ),
        (
            a_consent(revoked_at=NOW - timedelta(days=1)),
            "revoked its consent to be debited at 2026-11-14T12:00:00+00:00",
        ),
    ],
    ids=["none", "not-yet-granted", "revoked"],
)
def test_a_consent_refusal_says_what_is_wrong_with_the_consent(
    consent: ConsentRecord | None, fragment: str
) -> None:
    # Given a consent that is missing, not yet in force, or revoked, When evaluated
    message = replace(Scenario(), consent=consent).refusal().message
    # Then the message says which
    assert fragment in message


# --- 3. region_unsupported ----------------------------------------------------------------

EU_SAMPLE = ["AT", "BE", "BG", "CY", "DE", "ES", "FR", "HU", "IE", "IT", "MT", "PL", "SE"]
ALLOWED_PAIRS = [
    *((c, c) for c in ["US", "CA", "JP", "AU", "HK", "NZ", "GB"]),
    *zip(EU_SAMPLE, EU_SAMPLE[1:] + EU_SAMPLE[:1], strict=True),  # each to a neighbour
    ("US", "HK"),
    ("AU", "NZ"),
    ("NZ", "AU"),
    *(("GB", c) for c in [*EU_SAMPLE, "CH", "NO"]),
    *((c, "GB") for c in EU_SAMPLE),
    *((c, "CH") for c in EU_SAMPLE),
    *((c, "NO") for c in EU_SAMPLE),
    *(("CH", c) for c in [*EU_SAMPLE, "NO"]),
    *(("NO", c) for c in [*EU_SAMPLE, "CH"]),
]
REFUSED_PAIRS = [
    ("US", "CA"),
    ("US", "JP"),
    ("CA", "US"),
    ("JP", "AU"),
    ("HK", "US"),
    ("AU", "JP"),
    ("CH", "GB"),
    ("NO", "GB"),
    ("GB", "US"),
    ("CH", "CH"),
    ("NO", "NO"),
    ("DE", "US"),
    ("BR", "BR"),
]


@pytest.mark.parametrize("pair", ALLOWED_PAIRS, ids=[f"{p}->{a}" for p, a in ALLOWED_PAIRS])
def test_a_debit_within_a_region_or_along_a_corridor_is_allowed(pair: tuple[str, str]) -> None:
    # Given a platform and an account in a shared region or on a corridor
    scenario = where_platform_and_account_are_in(*pair)
    # When evaluated, Then the debit is allowed
    assert isinstance(scenario.decide(), Allowed)


@pytest.mark.parametrize("pair", REFUSED_PAIRS, ids=[f"{p}->{a}" for p, a in REFUSED_PAIRS])
def test_a_debit_between_unconnected_countries_is_refused(pair: tuple[str, str]) -> None:
    # Given a platform and an account in no shared region and on no corridor
    scenario = where_platform_and_account_are_in(*pair)
    # When evaluated, Then region_unsupported
    assert scenario.refusal().code is FailureCode.REGION_UNSUPPORTED


def test_a_cross_border_debit_is_reported_as_such() -> None:
    # Given a GB platform and a French account, When evaluated, Then allowed as cross-border
    decision = where_platform_and_account_are_in("GB", "FR").decide()
    assert isinstance(decision, Allowed)
    assert decision.availability is Availability.CROSS_BORDER


def test_a_region_refusal_names_both_countries_and_their_regions() -> None:
    # Given a US platform and a Swiss account, When evaluated
    message = where_platform_and_account_are_in("US", "CH").refusal().message
    # Then the message names the account, both countries and why
    assert "Account acct_1Debtor is in CH (in no domestic region)" in message
    assert "the platform is in US (region US)" in message
    assert "no cross-border corridor lets a platform in US debit accounts in CH" in message


def test_a_corridor_added_in_the_rules_file_allows_the_debit(tmp_path: Path) -> None:
    # Given a US platform and a Canadian account, refused with the default tables
    scenario = where_platform_and_account_are_in("US", "CA")
    assert scenario.refusal().code is FailureCode.REGION_UNSUPPORTED
    # When the operator's file adds a US → CA corridor
    path = tmp_path / "rules.yaml"
    path.write_text("corridors:\n  US: [HK, CA]\n")
    decision = replace(scenario, rules=RuleTables.from_file(path)).decide()
    # Then the same debit is allowed, cross-border
    assert decision == Allowed(availability=Availability.CROSS_BORDER)


# --- 4. currency_mismatch -----------------------------------------------------------------


def test_a_debit_in_another_currency_than_the_accounts_default_is_refused() -> None:
    # Given a USD debit of an account whose default currency is EUR, When evaluated
    refusal = Scenario().with_account(default_currency="eur").refusal()
    # Then currency_mismatch, naming both currencies
    assert refusal.code is FailureCode.CURRENCY_MISMATCH
    assert "in USD but account acct_1Debtor's default currency is EUR" in refusal.message


def test_currencies_are_compared_without_regard_to_case() -> None:
    # Given an account whose default currency is reported upper-case, When evaluated
    decision = Scenario().with_account(default_currency="USD").decide()
    # Then it matches the lower-case debit currency
    assert isinstance(decision, Allowed)


# --- 5. amount_exceeds_limit --------------------------------------------------------------

CAPPED = sorted(DEFAULT_CAPS)


@pytest.mark.parametrize("currency", CAPPED, ids=CAPPED)
@pytest.mark.parametrize(
    ("offset", "allowed"), [(-1, True), (0, True), (1, False)], ids=["cap-1", "cap", "cap+1"]
)
def test_the_cap_itself_is_allowed_and_one_minor_unit_more_is_not(
    currency: str, offset: int, allowed: bool
) -> None:
    # Given a debit of the currency's cap plus `offset` minor units
    scenario = amount_scenario(DEFAULT_CAPS[currency] + offset, currency)
    # When evaluated, Then it is allowed up to the cap and refused above it
    decision = scenario.decide()
    if allowed:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is FailureCode.AMOUNT_EXCEEDS_LIMIT


@given(currency=st.sampled_from(CAPPED), data=st.data())
def test_any_amount_is_allowed_exactly_when_it_is_within_the_cap(
    currency: str, data: st.DataObject
) -> None:
    # Given any amount from one minor unit to three times the cap, often right around it
    cap = DEFAULT_CAPS[currency]
    amount = data.draw(
        st.one_of(st.integers(1, 3 * cap), st.integers(cap - 2, cap + 2)), label="amount"
    )
    # When evaluated, Then the decision depends only on amount <= cap
    decision = amount_scenario(amount, currency).decide()
    assert isinstance(decision, Allowed) is (amount <= cap)


@given(amount=st.integers(min_value=1, max_value=10**12 - 1))
def test_yen_amounts_are_whole_yen_against_a_whole_yen_cap(amount: int) -> None:
    # Given a JPY debit, whose amount is in yen (zero-decimal)
    cap = DEFAULT_CAPS["jpy"]
    decision = amount_scenario(amount, "jpy").decide()
    # When evaluated, Then the cap compares yen with yen and the message shows no decimals
    if amount <= cap:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert f"{amount:,} JPY is above the per-debit cap of 14,000,000 JPY" in decision.message


@given(
    currency=st.sampled_from(sorted(ZERO_DECIMAL_CURRENCIES - set(DEFAULT_CAPS))),
    amount=st.integers(min_value=1, max_value=10**12 - 1),
)
def test_a_zero_decimal_currency_without_a_cap_is_refused_whatever_the_amount(
    currency: str, amount: int
) -> None:
    # Given a debit in a zero-decimal currency nobody configured a cap for, When evaluated
    refusal = amount_scenario(amount, currency).refusal()
    # Then it is refused rather than converted by guess
    assert refusal.code is FailureCode.AMOUNT_EXCEEDS_LIMIT
    assert f"No per-debit cap is configured for {currency.upper()}" in refusal.message


def test_an_amount_over_the_cap_is_refused_with_both_amounts() -> None:
    # Given a debit of 100,000.01 USD, When evaluated
    refusal = amount_scenario(USD_CAP + 1, "usd").refusal()
    # Then the message shows the amount and the cap in major units
    assert "100,000.01 USD is above the per-debit cap of 100,000.00 USD" in refusal.message


def test_a_cap_added_in_the_rules_file_allows_the_currency(tmp_path: Path) -> None:
    # Given a BRL debit, refused without a configured cap
    scenario = amount_scenario(2500, "brl")
    assert scenario.refusal().code is FailureCode.AMOUNT_EXCEEDS_LIMIT
    # When the operator's file adds a BRL cap
    path = tmp_path / "rules.json"
    path.write_text('{"caps": {"brl": 50000000}}')
    decision = replace(scenario, rules=RuleTables.from_file(path)).decide()
    # Then the same debit is allowed
    assert isinstance(decision, Allowed)


# --- 6. refund recovery -------------------------------------------------------------------


def test_a_recovery_of_an_unknown_refund_is_refused() -> None:
    # Given a recovery whose refund Stripe does not know, When evaluated
    refusal = replace(Scenario(), refund=None).refusal()
    # Then refund_not_found, naming the refund
    assert refusal.code is FailureCode.REFUND_NOT_FOUND
    assert REFUND_ID in refusal.message


def test_a_recovery_in_another_currency_than_the_refund_is_refused() -> None:
    # Given a USD recovery of a EUR refund, When evaluated
    refusal = replace(Scenario(), refund=a_refund(currency="eur")).refusal()
    # Then refund_currency_mismatch, naming both currencies
    assert refusal.code is FailureCode.REFUND_CURRENCY_MISMATCH
    assert "made in EUR but this recovery debits USD" in refusal.message


RECOVERIES = [
    # refund, already recovered, this amount, allowed
    (10_000, 0, 10_000, True),
    (10_000, 7_500, 2_500, True),
    (10_000, 7_500, 2_501, False),
    (10_000, 10_000, 1, False),
    (10_000, 12_000, 1, False),  # already over (a ledger anomaly): still refused
]


@pytest.mark.parametrize(
    ("refund_amount", "recovered", "amount", "allowed"),
    RECOVERIES,
    ids=["whole-refund", "exact-remainder", "one-cent-over", "fully-recovered", "over-recovered"],
)
def test_recoveries_of_one_refund_never_add_up_to_more_than_the_refund(
    refund_amount: int, recovered: int, amount: int, allowed: bool
) -> None:
    # Given a refund and what earlier recoveries took or are taking
    scenario = replace(
        Scenario().with_command(amount=amount),
        refund=a_refund(amount=refund_amount),
        recovered_for_refund=recovered,
    )
    # When this recovery is evaluated, Then it is allowed only if the total fits the refund
    decision = scenario.decide()
    if allowed:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND


@given(
    refund_amount=st.integers(min_value=1, max_value=USD_CAP * 2),
    recovered=st.integers(min_value=0, max_value=USD_CAP * 2),
    amount=st.integers(min_value=1, max_value=USD_CAP),
)
def test_a_recovery_is_allowed_exactly_when_the_total_fits_the_refund(
    refund_amount: int, recovered: int, amount: int
) -> None:
    # Given any refund, earlier recoveries and a recovery within the cap
    scenario = replace(
        Scenario().with_command(amount=amount),
        refund=a_refund(amount=refund_amount),
        recovered_for_refund=recovered,
    )
    # When evaluated, Then it is allowed exactly when recovered + amount <= refund
    assert isinstance(scenario.decide(), Allowed) is (recovered + amount <= refund_amount)


@pytest.mark.parametrize(
    ("recovered", "fragment"),
    [
        (
            7_500,
            "Recovering 30.00 USD for refund re_1Refunded of 100.00 USD would recover more "
            "than was refunded: 75.00 USD is already recovered or in flight, so at most 25.00 USD "
            "remains.",
        ),
        (
            10_000,
            "Refund re_1Refunded of 100.00 USD is already fully recovered or being "
            "recovered (100.00 USD); nothing remains to recover.",
        ),
    ],
    ids=["some-remains", "nothing-remains"],
)
def test_an_excessive_recovery_says_how_much_remains(recovered: int, fragment: str) -> None:
    # Given a 100.00 USD refund and earlier recoveries, When 30.00 USD more is asked
    scenario = replace(
        Scenario().with_command(amount=3_000),
        refund=a_refund(amount=10_000),
        recovered_for_refund=recovered,
    )
    # Then the message says how much may still be recovered
    assert scenario.refusal().message == fragment


REFUND_STATUSES = [
    ("succeeded", None),
    ("pending", None),
    ("failed", FailureCode.REFUND_NOT_RECOVERABLE),
    ("canceled", FailureCode.REFUND_NOT_RECOVERABLE),
    ("unknown", FailureCode.REFUND_NOT_RECOVERABLE),  # no status, or one Stripe added later
    ("requires_action", FailureCode.REFUND_REQUIRES_ACTION),
]


@pytest.mark.parametrize(
    ("status", "refused_with"), REFUND_STATUSES, ids=[s for s, _ in REFUND_STATUSES]
)
def test_only_a_refund_that_succeeded_or_is_pending_can_be_recovered(
    status: str, refused_with: FailureCode | None
) -> None:
    # Given a recovery of a refund with this status, When evaluated
    decision = _refund_changed(Scenario(), status=status).decide()
    # Then only a refund that moved or is moving money is recovered
    if refused_with is None:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is refused_with


def test_a_failed_refund_refusal_names_the_refund_and_its_status() -> None:
    # Given a recovery of a canceled refund, When evaluated
    refusal = _refund_changed(Scenario(), status="canceled").refusal()
    # Then the message says which refund and why nothing can be recovered
    assert refusal.message == (
        "Refund re_1Refunded has status 'canceled': no money left the platform for it, so "
        "there is nothing to recover (only a succeeded or pending refund can be recovered)."
    )


@pytest.mark.parametrize(
    "accounts",
    [
        (),
        (("transfer_data.destination", ACCOUNT_ID),),
        (("destination", ACCOUNT_ID), ("on_behalf_of", ACCOUNT_ID)),
    ],
    ids=["names-none", "destination-is-the-account", "every-field-is-the-account"],
)
def test_a_refunded_charge_that_paid_the_debited_account_or_names_none_is_recovered(
    accounts: tuple[tuple[str, str], ...],
) -> None:
    # Given a recovery whose refunded charge names these accounts, When evaluated
    # Then it is allowed
    assert isinstance(_refund_changed(Scenario(), charge_accounts=accounts).decide(), Allowed)


@pytest.mark.parametrize(
    "accounts",
    [
        (("transfer_data.destination", "acct_1Other"),),
        (("destination", "acct_1Other"),),
        (("on_behalf_of", "acct_1Other"),),
        (("transfer_data.destination", ACCOUNT_ID), ("on_behalf_of", "acct_1Other")),
    ],
    ids=["transfer-destination", "destination", "on-behalf-of", "one-of-two-fields"],
)
def test_a_refunded_charge_that_paid_another_account_is_not_recovered_from_this_one(
    accounts: tuple[tuple[str, str], ...],
) -> None:
    # Given a recovery whose refunded charge names another account in any field
    scenario = _refund_changed(Scenario(), charge_accounts=accounts)
    # When evaluated, Then refund_account_mismatch
    assert scenario.refusal().code is FailureCode.REFUND_ACCOUNT_MISMATCH


def test_an_account_mismatch_names_the_charge_the_field_and_both_accounts() -> None:
    # Given a refunded charge paid to acct_1Other, When acct_1Debtor is debited to recover it
    refusal = _refund_changed(
        Scenario(), charge_accounts=(("transfer_data.destination", "acct_1Other"),)
    ).refusal()
    # Then the message says where the money went
    assert refusal.message == (
        "Refund re_1Refunded refunded charge ch_1Sale, which paid another account "
        "(transfer_data.destination acct_1Other), not acct_1Debtor which this recovery debits; "
        "recover from the account the charge paid."
    )


def test_a_refund_requiring_action_says_to_try_again_later() -> None:
    # Given a recovery of a refund that requires action, When evaluated
    refusal = _refund_changed(Scenario(), status="requires_action").refusal()
    # Then the producer is told it may succeed once the refund moves on
    assert refusal.code.retry_may_succeed
    assert "send a new request once Stripe reports it pending or succeeded" in refusal.message


def test_refund_rules_do_not_apply_to_other_debits() -> None:
    # Given a platform charge (no refund) while the ledger shows recoveries, When evaluated
    scenario = replace(Scenario(command=a_platform_charge()), refund=None, recovered_for_refund=1)
    # Then no refund rule refuses it
    assert isinstance(scenario.decide(), Allowed)


# --- 7. insufficient_balance --------------------------------------------------------------


@pytest.mark.parametrize(
    ("balance", "allowed"),
    [(None, True), (2_500, True), (2_499, False), (0, False), (-100, False)],
    ids=["pre-check-off", "exactly-enough", "one-cent-short", "empty", "negative"],
)
def test_the_balance_pre_check_refuses_only_a_balance_below_the_amount(
    balance: int | None, allowed: bool
) -> None:
    # Given a 25.00 USD debit and this available balance (None: pre-check off)
    scenario = replace(Scenario(), available_balance=balance)
    # When evaluated, Then it is refused only when a known balance is below the amount
    decision = scenario.decide()
    if allowed:
        assert isinstance(decision, Allowed)
    else:
        assert isinstance(decision, Refusal)
        assert decision.code is FailureCode.INSUFFICIENT_BALANCE


def test_an_insufficient_balance_refusal_shows_balance_and_amount() -> None:
    # Given 10.00 USD available for a 25.00 USD debit, When evaluated
    message = replace(Scenario(), available_balance=1_000).refusal().message
    # Then both amounts are shown
    assert "acct_1Debtor has 10.00 USD available, less than the 25.00 USD to debit" in message


# --- caller bugs --------------------------------------------------------------------------

CALLER_BUGS = [
    ("account-facts-of-another-account", lambda s: s.with_account(account_id="acct_1Other")),
    ("consent-of-another-account", lambda s: replace(s, consent=a_consent(account_id="acct_1X"))),
    ("refund-facts-of-another-refund", lambda s: replace(s, refund=a_refund(refund_id="re_1X"))),
    ("negative-recovered-sum", lambda s: replace(s, recovered_for_refund=-1)),
    ("naive-now", lambda s: replace(s, now=NOW.replace(tzinfo=None))),
]


@pytest.mark.parametrize("bug", [b[1] for b in CALLER_BUGS], ids=[b[0] for b in CALLER_BUGS])
def test_inconsistent_inputs_raise_instead_of_becoming_a_refusal(
    bug: Callable[[Scenario], Scenario],
) -> None:
    # Given inputs that do not belong together (a bug in the caller), When evaluated
    # Then ValueError: a refusal would blame the producer for the worker's mistake
    with pytest.raises(ValueError, match=r"given for|must not be negative|timezone-aware"):
        bug(Scenario()).decide()


def test_decisions_are_immutable() -> None:
    # Given a refusal, When someone tries to change it, Then it cannot be changed
    refusal = broken(FailureCode.CONSENT_MISSING).refusal()
    with pytest.raises(dataclasses.FrozenInstanceError):
        refusal.code = FailureCode.STRIPE_REJECTED  # type: ignore[misc]
