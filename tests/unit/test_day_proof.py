"""The daily proof's matching (worker.domain.day_proof.prove_day): every kind of difference."""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from worker.domain.day_proof import DayProof, DifferenceKind, LedgerDebit, prove_day
from worker.domain.types import ChargeSeen

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@dataclass(frozen=True)
class Debit:
    request_id: str
    payment_id: str | None
    amount: int = 500
    currency: str = "usd"
    account: str = "acct_1"
    status: str = "succeeded"


def a_charge(n: int, **changes: object) -> ChargeSeen:
    charge = ChargeSeen(
        id=f"py_{n}",
        status="succeeded",
        paid=True,
        amount=500,
        currency="usd",
        account="acct_1",
        transfer=f"tr_{n}",
        balance_transaction=None,
        created=T0,
        request_id=f"req-{n}",
    )
    return replace(charge, **changes)  # type: ignore[arg-type]


def prove(
    stripe: list[ChargeSeen], day: list[Debit], others: list[Debit] | None = None
) -> DayProof:
    known: dict[str, LedgerDebit] = {d.request_id: d for d in (others or [])}

    def about(request_ids: Collection[str]) -> Mapping[str, LedgerDebit]:
        return {r: known[r] for r in request_ids if r in known}

    by_payment: dict[str, LedgerDebit] = {d.payment_id: d for d in day if d.payment_id}
    return prove_day(stripe, by_payment, about)


def kinds(proof: DayProof) -> list[tuple[str, str | None, bool]]:
    return [(str(d.kind), d.request_id, d.explained) for d in proof.differences]


def test_a_day_where_both_sides_agree_is_all_matched() -> None:
    # Given two charges at Stripe and the same two successes in the ledger
    stripe = [a_charge(1), a_charge(2)]
    ledger = [Debit("req-1", "py_1"), Debit("req-2", "py_2")]

    # When the day is proved
    proof = prove(stripe, ledger)

    # Then every charge is matched and nothing differs
    assert (proof.stripe_charges, proof.ledger_debits, proof.matched) == (2, 2, 2)
    assert proof.differences == []
    assert proof.unexplained == 0


def test_a_charge_for_no_request_in_the_ledger_is_unexplained() -> None:
    # Given a charge at Stripe the ledger has never heard of
    proof = prove([a_charge(1), a_charge(9)], [Debit("req-1", "py_1")])

    # Then it is "at Stripe, not in the ledger", unexplained
    assert kinds(proof) == [("at_stripe_not_in_ledger", "req-9", False)]
    assert proof.unexplained == 1


def test_a_charge_for_a_request_the_ledger_says_failed_is_unexplained() -> None:
    # Given the ledger recorded the request as failed but Stripe charged it
    proof = prove([a_charge(3)], [], others=[Debit("req-3", None, status="failed")])

    # Then it is at Stripe only, unexplained, and says what the ledger holds
    assert kinds(proof) == [("at_stripe_not_in_ledger", "req-3", False)]
    assert proof.differences[0].detail["ledger"] == "failed"


def test_a_charge_for_a_request_still_open_is_explained() -> None:
    # Given the request is still being settled by the reconciler
    proof = prove([a_charge(4)], [], others=[Debit("req-4", None, status="needs_reconciliation")])

    # Then the difference is explained (the reconciler will settle it)
    assert kinds(proof) == [("at_stripe_not_in_ledger", "req-4", True)]
    assert proof.unexplained == 0


def test_a_success_in_the_ledger_with_no_charge_at_stripe_is_unexplained() -> None:
    # Given the ledger holds a success Stripe does not
    proof = prove([a_charge(1)], [Debit("req-1", "py_1"), Debit("req-5", "py_5")])

    # Then it is "in the ledger, not at Stripe"
    assert kinds(proof) == [("in_ledger_not_at_stripe", "req-5", False)]
    assert proof.differences[0].charge_id == "py_5"


def test_an_amount_currency_or_account_that_differs_is_unexplained_and_named() -> None:
    for field, value in (("amount", 499), ("currency", "eur"), ("account", "acct_2")):
        # Given the charge and the ledger disagree on one field
        proof = prove([a_charge(1, **{field: value})], [Debit("req-1", "py_1")])

        # Then it differs, naming the field
        assert kinds(proof) == [("differs", "req-1", False)], field
        assert field in proof.differences[0].detail
        assert proof.matched == 0


def test_two_charges_for_one_request_are_paid_twice_once() -> None:
    # Given two charges at Stripe carry one request's id; the ledger holds one of them
    stripe = [a_charge(1), a_charge(2, request_id="req-1")]
    proof = prove(stripe, [Debit("req-1", "py_1")], others=[Debit("req-1", "py_1")])

    # Then one paid-twice difference names both charges
    assert kinds(proof) == [("paid_twice", "req-1", False)]
    assert proof.differences[0].detail == {"charges": ["py_1", "py_2"]}


def test_a_second_charge_on_another_day_than_the_recorded_one_is_paid_twice() -> None:
    # Given the ledger recorded py_1 (another day) and Stripe holds py_7 today for it
    proof = prove([a_charge(7, request_id="req-1")], [], others=[Debit("req-1", "py_1")])

    # Then today's charge is a second payment
    assert kinds(proof) == [("paid_twice", "req-1", False)]
    assert proof.differences[0].detail["ledger_payment"] == "py_1"
    assert proof.differences[0].kind is DifferenceKind.PAID_TWICE
