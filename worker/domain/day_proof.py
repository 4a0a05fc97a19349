"""The daily proof: every account-debit charge Stripe holds for a day matched one to one with
the ledger's successes of that day. A pure function of what both sides hold, so every kind
of difference is testable without Stripe or a database."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Collection, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

from worker.domain.types import ChargeSeen

OPEN_STATUSES = frozenset({"received", "attempting", "needs_reconciliation"})


class DifferenceKind(StrEnum):
    AT_STRIPE_ONLY = "at_stripe_not_in_ledger"
    IN_LEDGER_ONLY = "in_ledger_not_at_stripe"
    DIFFERS = "differs"  # amount, currency, account or status
    PAID_TWICE = "paid_twice"


class LedgerDebit(Protocol):
    """The ledger's view of one request, as the proof reads it."""

    @property
    def request_id(self) -> str: ...
    @property
    def payment_id(self) -> str | None: ...
    @property
    def amount(self) -> int: ...
    @property
    def currency(self) -> str: ...
    @property
    def account(self) -> str: ...
    @property
    def status(self) -> str: ...


@dataclass(frozen=True, slots=True)
class Difference:
    kind: DifferenceKind
    request_id: str | None
    charge_id: str | None
    explained: bool
    detail: dict[str, object]


@dataclass
class DayProof:
    stripe_charges: int = 0
    ledger_debits: int = 0
    matched: int = 0
    differences: list[Difference] = field(default_factory=list)

    @property
    def unexplained(self) -> int:
        return sum(1 for d in self.differences if not d.explained)


def _disagreements(charge: ChargeSeen, debit: LedgerDebit) -> dict[str, object]:
    found: dict[str, object] = {}
    if charge.amount != debit.amount:
        found["amount"] = {"stripe": charge.amount, "ledger": debit.amount}
    if charge.currency.lower() != debit.currency.lower():
        found["currency"] = {"stripe": charge.currency, "ledger": debit.currency}
    if charge.account != debit.account:
        found["account"] = {"stripe": charge.account, "ledger": debit.account}
    if charge.status != "succeeded" or not charge.paid:
        found["status"] = {"stripe": charge.status, "paid": charge.paid, "ledger": "succeeded"}
    if charge.request_id != debit.request_id:
        found["request_id"] = {"stripe": charge.request_id, "ledger": debit.request_id}
    return found


def prove_day(
    stripe: Iterable[ChargeSeen],
    ledger: MutableMapping[str, LedgerDebit],
    about: Callable[[Collection[str]], Mapping[str, LedgerDebit]],
) -> DayProof:
    """`ledger`: the day's successes by payment id (consumed); `about`: the ledger's view of
    requests whose charge the day's successes do not hold, whatever their status."""
    proof = DayProof(ledger_debits=len(ledger))
    by_request: dict[str, list[str]] = defaultdict(list)
    unmatched: list[ChargeSeen] = []
    for charge in stripe:
        proof.stripe_charges += 1
        if charge.request_id is not None:
            by_request[charge.request_id].append(charge.id)
        debit = ledger.pop(charge.id, None)
        if debit is None:
            unmatched.append(charge)
            continue
        disagree = _disagreements(charge, debit)
        if disagree:
            proof.differences.append(
                Difference(DifferenceKind.DIFFERS, debit.request_id, charge.id, False, disagree)
            )
        else:
            proof.matched += 1
    twice = {request: ids for request, ids in by_request.items() if len(ids) > 1}
    for request_id, ids in sorted(twice.items()):
        proof.differences.append(
            Difference(DifferenceKind.PAID_TWICE, request_id, None, False, {"charges": ids})
        )
    known = about({c.request_id for c in unmatched if c.request_id is not None})
    for charge in unmatched:
        if charge.request_id in twice:
            continue  # reported once, with every charge of the request
        proof.differences.append(_only_at_stripe(charge, known.get(charge.request_id or "")))
    for payment_id, debit in sorted(ledger.items()):
        proof.differences.append(
            Difference(
                DifferenceKind.IN_LEDGER_ONLY,
                debit.request_id,
                payment_id,
                False,
                {"amount": debit.amount, "currency": debit.currency, "account": debit.account},
            )
        )
    return proof


def _only_at_stripe(charge: ChargeSeen, debit: LedgerDebit | None) -> Difference:
    detail: dict[str, object] = {
        "amount": charge.amount,
        "currency": charge.currency,
        "account": charge.account,
        "status": charge.status,
    }
    if debit is None:
        detail["ledger"] = "no such request"
        kind = DifferenceKind.AT_STRIPE_ONLY
        return Difference(kind, charge.request_id, charge.id, False, detail)
    detail["ledger"] = debit.status
    if debit.status in OPEN_STATUSES:
        # Its outcome is being settled: the reconciler will find this charge.
        detail["explanation"] = "the request is still open; the reconciler settles it"
        return Difference(DifferenceKind.AT_STRIPE_ONLY, debit.request_id, charge.id, True, detail)
    if debit.status == "succeeded" and debit.payment_id != charge.id:
        detail["ledger_payment"] = debit.payment_id
        return Difference(DifferenceKind.PAID_TWICE, debit.request_id, charge.id, False, detail)
    if debit.status == "succeeded":
        # The ledger holds this very charge, recorded under another day's time.
        detail["explanation"] = "the ledger records this charge under another day"
        return Difference(DifferenceKind.DIFFERS, debit.request_id, charge.id, True, detail)
    return Difference(DifferenceKind.AT_STRIPE_ONLY, debit.request_id, charge.id, False, detail)
