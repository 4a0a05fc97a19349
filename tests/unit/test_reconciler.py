"""The reconciler settles unknown outcomes from Stripe's records (worker/ops/reconciler.py), and
an operator settles what it cannot (worker/ops/operator_settle.py). Fakes for Stripe, a real
SQLite ledger."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest

from schemas.codes import FailureCode
from schemas.commands import DebitRequested
from schemas.events import SUCCEEDED_TYPE
from worker.adapters.ledger import Status
from worker.domain.errors import OutcomeUnknown, Unresolvable
from worker.domain.types import ChargeSeen
from worker.handlers import HandlerConfig
from worker.ops.operator_settle import SettleRefused, settle_not_executed, settle_with_charge
from worker.ops.reconciler import RESENT, Reconciler

from .fakes import ACCOUNT_ID, World, a_body, a_world

GRACE_SECONDS = 3600.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    world = a_world(tmp_path)
    world.config = HandlerConfig(key_escalation_after_seconds=20 * 3600.0)
    return world


def escalated(world: World, request_id: str = "req-1") -> None:
    """The request's attempt ended with an unknown outcome and was escalated, as the
    attempt engine does once its attempts are used up."""
    with pytest.raises(OutcomeUnknown):
        world.handle(a_body(request_id=request_id))
    assert world.ledger.requests.mark_needs_reconciliation(request_id, "worker-1", "test")


def reconciler(world: World) -> Reconciler:
    return Reconciler(
        world.services(), world.stripe, grace_seconds=GRACE_SECONDS, owner="reconciler:test"
    )


def events_of(world: World, request_id: str = "req-1") -> list[dict[str, object]]:
    return [json.loads(e.body) for e in world.publisher.published if e.request_id == request_id]


def test_a_charge_stripe_made_but_whose_answer_was_lost_settles_the_request_as_succeeded(
    world: World,
) -> None:
    # Given Stripe moved the money but the answer was lost, and the request was escalated
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)
    calls = len(world.stripe.debit_calls)

    # When the reconciler runs
    report = reconciler(world).settle_round()

    # Then the request succeeded with Stripe's charge, without calling Stripe again
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.payment_id == "py_Fake1"
    assert "req-1" in report.settled
    assert len(world.stripe.debit_calls) == calls
    # and its evidence is in the ledger, and its one event was published
    settlement = world.ledger.reconciliation.settlement("req-1")
    assert settlement is not None
    assert settlement.evidence["charges"][0]["id"] == "py_Fake1"
    assert [e["type"] for e in events_of(world)] == [SUCCEEDED_TYPE]


def test_a_second_round_records_and_emits_nothing_more(world: World) -> None:
    # Given a request the reconciler settled
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)
    reconciler(world).settle_round()
    published = len(world.publisher.published)

    # When the reconciler runs again
    report = reconciler(world).settle_round()

    # Then nothing is settled twice, and no event is sent again
    assert report.settled == {}
    assert len(world.publisher.published) == published


def test_a_debit_stripe_never_made_is_sent_once_more_with_its_key_while_stripe_keeps_it(
    world: World,
) -> None:
    # Given Stripe never carried the debit out, and the request was escalated
    world.stripe.fail_next(OutcomeUnknown("connection refused"))
    escalated(world)

    # When the reconciler runs within the key's 24 h
    report = reconciler(world).settle_round()

    # Then the same request was sent again with the same key, and succeeded
    assert world.stripe.idempotency_keys == ["debit-worker:v1:req-1"] * 2
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert "resent" in report.settled["req-1"]
    assert RESENT in [e.action for e in world.ledger.history("request", "req-1")]


def test_a_request_is_resent_only_once_then_settled_not_executed_after_the_grace(
    world: World,
) -> None:
    # Given Stripe never made the debit and answers the resend with its stored 500 again
    world.stripe.fail_next(OutcomeUnknown("500"))
    escalated(world)
    world.stripe.fail_next(Unresolvable("Stripe replays a stored error 500"), times=5)
    first = reconciler(world).settle_round()
    assert "req-1" in first.still_open
    calls = len(world.stripe.debit_calls)

    # When the grace for a late 500 has passed and the reconciler runs again
    world.clock.advance(GRACE_SECONDS + 600)
    report = reconciler(world).settle_round()

    # Then it was not sent a third time, and it failed not_executed with its evidence
    assert len(world.stripe.debit_calls) == calls
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.failure_code) == (Status.FAILED, FailureCode.NOT_EXECUTED)
    assert "req-1" in report.settled
    settlement = world.ledger.reconciliation.settlement("req-1")
    assert settlement is not None
    assert settlement.evidence["charges"] == []
    assert events_of(world)[-1]["data"]["code"] == "not_executed"  # type: ignore[index]


def test_past_the_key_window_nothing_is_resent_and_stripes_records_decide(world: World) -> None:
    # Given a request escalated long ago, that Stripe never carried out
    world.stripe.fail_next(OutcomeUnknown("connection refused"))
    escalated(world)
    calls = len(world.stripe.debit_calls)
    world.clock.advance(21 * 3600)

    # When the reconciler runs
    reconciler(world).settle_round()

    # Then Stripe was not called with the old key, and the request failed not_executed
    assert len(world.stripe.debit_calls) == calls
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.failure_code == FailureCode.NOT_EXECUTED


def test_a_late_executed_charge_found_after_the_resend_settles_the_request_as_succeeded(
    world: World,
) -> None:
    # Given the resend was answered with a stored 500, and Stripe carried the debit out late
    world.stripe.fail_next(OutcomeUnknown("500"))
    escalated(world)
    world.stripe.fail_next(Unresolvable("Stripe replays a stored error 500"))
    reconciler(world).settle_round()
    world.clock.advance(120)
    late = a_charge_for("req-1", "py_Late1", world)
    world.stripe.plant_charge(late, key="debit-worker:v1:req-1")

    # When the reconciler runs again
    reconciler(world).settle_round()

    # Then the request succeeded with the late charge
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.payment_id) == (Status.SUCCEEDED, "py_Late1")


def a_charge_for(request_id: str, charge_id: str, world: World, **changes: object) -> ChargeSeen:
    charge = ChargeSeen(
        id=charge_id,
        status="succeeded",
        paid=True,
        amount=2500,
        currency="usd",
        account=ACCOUNT_ID,
        transfer=f"tr{charge_id.removeprefix('py')}",
        balance_transaction=None,
        created=world.clock(),
        request_id=request_id,
    )
    return replace(charge, **changes)  # type: ignore[arg-type]


def test_two_charges_for_one_request_leave_it_open_audited_as_ambiguous(world: World) -> None:
    # Given Stripe holds the debit twice for one request
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)
    world.stripe.plant_charge(a_charge_for("req-1", "py_Twice", world))

    # When the reconciler runs
    report = reconciler(world).settle_round()

    # Then it is not settled on a guess: open, ambiguous, audited
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
    assert "req-1" in report.ambiguous
    assert "reconcile_ambiguous" in [e.action for e in world.ledger.history("request", "req-1")]
    assert events_of(world) == []


def test_a_pending_charge_leaves_the_request_open(world: World) -> None:
    # Given the only charge is pending at Stripe, and the resend window has passed
    world.stripe.fail_next(OutcomeUnknown("connection reset"))
    escalated(world)
    world.stripe.plant_charge(a_charge_for("req-1", "py_Pending", world, status="pending"))
    world.clock.advance(21 * 3600)

    # When the reconciler runs
    report = reconciler(world).settle_round()

    # Then it waits
    assert "req-1" in report.still_open
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION


def test_a_request_escalated_before_reaching_stripe_is_left_to_a_person(world: World) -> None:
    # Given a request escalated before any Stripe call (no idempotency key)
    command = DebitRequested.model_validate_json(a_body(request_id="req-3"))
    world.ledger.requests.claim(command, "worker-1", 120.0)
    world.ledger.requests.mark_needs_reconciliation("req-3", "worker-1", "test")

    # When the reconciler runs
    report = reconciler(world).settle_round()

    # Then it is named for a person, and Stripe is not called
    assert report.for_a_person == ["req-3"]
    assert world.stripe.debit_calls == []


def test_an_operator_settles_with_the_charge_found_and_the_event_is_sent(world: World) -> None:
    # Given a request whose answer was lost, and the charge an operator found at Stripe
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)

    # When an operator settles it with the charge found
    outcome = settle_with_charge(world.services(), world.stripe, "req-1", "py_Fake1", "alice")

    # Then it succeeded, by the operator, with the charge's evidence, and its event was sent
    assert outcome == "succeeded"
    settlement = world.ledger.reconciliation.settlement("req-1")
    assert settlement is not None
    assert settlement.actor == "operator:alice"
    assert [e["type"] for e in events_of(world)] == [SUCCEEDED_TYPE]


def test_an_operator_cannot_settle_with_a_charge_of_another_request(world: World) -> None:
    # Given a charge made for another request
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)
    world.stripe.plant_charge(a_charge_for("req-other", "py_Other", world))

    # When an operator settles req-1 with it, Then nothing is recorded
    with pytest.raises(SettleRefused, match="req-other"):
        settle_with_charge(world.services(), world.stripe, "req-1", "py_Other", "alice")
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION


def test_not_executed_is_refused_while_stripe_may_still_carry_the_debit_out(
    world: World,
) -> None:
    # Given a request whose last attempt is recent
    world.stripe.fail_next(OutcomeUnknown("500"))
    escalated(world)

    # When an operator declares it not executed, Then it is refused
    with pytest.raises(SettleRefused, match="late attempt"):
        settle_not_executed(
            world.services(),
            world.stripe,
            "req-1",
            "ticket 42",
            "alice",
            grace_seconds=GRACE_SECONDS,
        )


def test_not_executed_is_refused_when_stripe_holds_a_charge_for_it(world: World) -> None:
    # Given Stripe did make the charge
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    escalated(world)
    world.clock.advance(GRACE_SECONDS + 600)

    # When an operator declares it not executed, Then it is refused, naming the charge
    with pytest.raises(SettleRefused, match="py_Fake1"):
        settle_not_executed(
            world.services(),
            world.stripe,
            "req-1",
            "ticket 42",
            "alice",
            grace_seconds=GRACE_SECONDS,
        )


def test_not_executed_after_the_window_fails_the_request_with_the_reason(world: World) -> None:
    # Given Stripe never made the debit, and the window has closed
    world.stripe.fail_next(OutcomeUnknown("500"))
    escalated(world)
    world.clock.advance(GRACE_SECONDS + 600)

    # When an operator declares it not executed
    outcome = settle_not_executed(
        world.services(),
        world.stripe,
        "req-1",
        "ticket 42",
        "alice",
        grace_seconds=GRACE_SECONDS,
    )

    # Then it failed not_executed, by the operator, with the reason in the message
    assert outcome == "not_executed"
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.failure_code == FailureCode.NOT_EXECUTED
    assert "ticket 42" in (record.failure_message or "")


def test_a_resend_whose_outcome_is_unknown_is_never_settled_in_the_same_round(
    world: World,
) -> None:
    # Given a request whose window has closed but whose key Stripe still keeps, and whose
    # resend is answered with no answer (Stripe may carry it out late)
    world.stripe.fail_next(OutcomeUnknown("500"))
    escalated(world)
    world.clock.advance(GRACE_SECONDS + 600)
    world.stripe.fail_next(OutcomeUnknown("no answer"))

    # When the reconciler runs
    report = reconciler(world).settle_round()

    # Then it was resent, and stays open: the resend's own window has just begun
    assert len(world.stripe.debit_calls) == 2
    assert "req-1" in report.still_open
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
