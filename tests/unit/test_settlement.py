"""Settling an unknown outcome from Stripe's records (worker.domain.settlement.decide)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

from schemas.codes import FailureCode
from worker.domain.settlement import Failed, StaysOpen, Succeeded, Unknown, decide
from worker.domain.types import ChargeSeen

T0 = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
GRACE = timedelta(hours=1)


def a_request() -> Unknown:
    return Unknown(
        request_id="req-1",
        account="acct_1",
        amount=500,
        currency="usd",
        idempotency_key="debit-worker:v1:req-1",
        first_attempt_at=T0,
        last_attempt_at=T0 + timedelta(minutes=10),
    )


def a_charge(**changes: object) -> ChargeSeen:
    charge = ChargeSeen(
        id="py_1",
        status="succeeded",
        paid=True,
        amount=500,
        currency="usd",
        account="acct_1",
        transfer="tr_1",
        balance_transaction="txn_1",
        created=T0 + timedelta(seconds=3),
        request_id="req-1",
    )
    return replace(charge, **changes)  # type: ignore[arg-type]


def after_the_window() -> datetime:
    return a_request().window(GRACE)[1] + timedelta(seconds=1)


def test_one_succeeded_charge_of_the_money_asked_for_settles_the_request_as_succeeded() -> None:
    # Given Stripe's records hold one succeeded charge as asked for
    charge = a_charge()

    # When the request is decided
    verdict = decide(a_request(), [charge], read_until=T0 + timedelta(hours=1), grace=GRACE)

    # Then it succeeded with that charge
    assert verdict == Succeeded(charge)


def test_the_same_charge_found_twice_by_event_and_list_counts_once() -> None:
    # Given the Events and the charges list both name the same charge
    charge = a_charge()

    # When the request is decided
    verdict = decide(a_request(), [charge, charge], read_until=T0, grace=GRACE)

    # Then it is one charge: succeeded
    assert verdict == Succeeded(charge)


def test_no_charge_before_the_grace_has_passed_keeps_the_request_open_without_alert() -> None:
    # Given no charge yet, read before the last attempt plus the grace has passed
    read_until = a_request().last_attempt_at + GRACE - timedelta(minutes=1)

    # When the request is decided
    verdict = decide(a_request(), [], read_until=read_until, grace=GRACE)

    # Then it stays open, not ambiguous: a late 500 may still be carried out
    assert isinstance(verdict, StaysOpen)
    assert not verdict.ambiguous


def test_no_charge_over_the_whole_closed_window_settles_it_as_not_executed() -> None:
    # Given Stripe's records over the whole window hold no charge for the request
    # When the request is decided after the window closed
    verdict = decide(a_request(), [], read_until=after_the_window(), grace=GRACE)

    # Then it failed not_executed, and the message names the key that was looked for
    assert isinstance(verdict, Failed)
    assert verdict.code is FailureCode.NOT_EXECUTED
    assert "debit-worker:v1:req-1" in verdict.message


def test_two_charges_for_one_request_stay_open_and_alert() -> None:
    # Given two charges carry the request's id
    charges = [a_charge(), a_charge(id="py_2")]

    # When the request is decided
    verdict = decide(a_request(), charges, read_until=after_the_window(), grace=GRACE)

    # Then it is never settled on a guess: open, ambiguous, naming both
    assert isinstance(verdict, StaysOpen)
    assert verdict.ambiguous
    assert "py_1" in verdict.reason
    assert "py_2" in verdict.reason


def test_a_charge_of_another_amount_currency_or_account_stays_open_and_alerts() -> None:
    for change in ({"amount": 499}, {"currency": "eur"}, {"account": "acct_2"}):
        # Given the one charge found differs from the debit asked for
        charge = a_charge(**change)

        # When the request is decided
        verdict = decide(a_request(), [charge], read_until=after_the_window(), grace=GRACE)

        # Then it stays open and alerts, naming what differs
        assert isinstance(verdict, StaysOpen), change
        assert verdict.ambiguous
        assert next(iter(change)) in verdict.reason


def test_a_pending_charge_keeps_the_request_open_without_alert() -> None:
    # Given the one charge is still pending at Stripe
    verdict = decide(
        a_request(), [a_charge(status="pending", paid=False)], read_until=T0, grace=GRACE
    )

    # Then the request waits for it
    assert isinstance(verdict, StaysOpen)
    assert not verdict.ambiguous


def test_a_failed_charge_settles_the_request_as_failed_with_that_charge() -> None:
    # Given the one charge failed at Stripe
    charge = a_charge(status="failed", paid=False)

    # When the request is decided
    verdict = decide(a_request(), [charge], read_until=T0, grace=GRACE)

    # Then no money moved: the request failed, stripe_rejected, naming the charge
    assert isinstance(verdict, Failed)
    assert verdict.code is FailureCode.STRIPE_REJECTED
    assert verdict.charge == charge


def test_a_succeeded_but_unpaid_charge_is_ambiguous() -> None:
    # Given a charge that says succeeded but not paid
    verdict = decide(a_request(), [a_charge(paid=False)], read_until=T0, grace=GRACE)

    # Then a person must look
    assert isinstance(verdict, StaysOpen)
    assert verdict.ambiguous
