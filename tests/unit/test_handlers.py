"""handle_debit_requested end to end, signed as production requires, with a fake Stripe and
publisher and a real SQLite ledger.

Each test tells one story of a DebitRequested: what the producer hears (the published
events), what Stripe was asked (the fake's records), and what the ledger remembers.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from schemas.codes import FailureCode
from schemas.events import FAILED_TYPE, SUCCEEDED_TYPE
from schemas.topology import SUCCEEDED_ROUTING_KEY
from worker.adapters.ledger import Status, Success
from worker.domain.errors import OutcomeUnknown, RequestBusy, TransientFailure
from worker.domain.types import DebitCharge, OutboxEvent, Payment, idempotency_key
from worker.handlers import HandlerConfig, Result
from worker.transport.parsing import Undeliverable
from worker.transport.relay import GRACE_SECONDS, relay_once

from .fakes import (
    ACCOUNT_ID,
    REFUND_ID,
    World,
    a_body,
    a_recovery_body,
    a_refund,
    a_world,
    an_account,
    stripe_refusal,
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def handle(world: World, body: str | bytes, owner: str = "worker-1") -> Result:
    return world.handle(body, owner)


def status_of(world: World, request_id: str = "req-1") -> Status:
    record = world.ledger.requests.get(request_id)
    assert record is not None
    return record.status


def failure_code(world: World, index: int = -1) -> str:
    return str(world.publisher.data(index)["code"])


# --- success --------------------------------------------------------------------------------


def test_a_permitted_debit_charges_once_and_announces_one_success_with_the_payment_ids(
    world: World,
) -> None:
    # Given a debitable account with consent
    # When a debit of 25.00 USD is handled
    result = handle(world, a_body())

    # Then Stripe was charged once, with the request's idempotency key
    assert result is Result.SUCCEEDED
    assert [(c.account, c.amount, c.currency) for c in world.stripe.debit_calls] == [
        (ACCOUNT_ID, 2500, "usd")
    ]
    assert world.stripe.idempotency_keys == [idempotency_key("req-1")]
    # And exactly one DebitSucceeded carries the payment's ids
    assert [e.event_type for e in world.publisher.published] == [SUCCEEDED_TYPE]
    data = world.publisher.data()
    assert (data["payment"], data["transfer"], data["balance_transaction"]) == (
        "py_Fake1",
        "tr_Fake1",
        "txn_Fake1",
    )
    assert (data["request_id"], data["amount"]) == ("req-1", 2500)
    # And the ledger says succeeded, with the payment, and nothing left in the outbox
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.payment_id, record.attempts) == (Status.SUCCEEDED, "py_Fake1", 1)
    assert world.ledger.outbox.count_unsent() == 0


# --- policy refusals ------------------------------------------------------------------------


def _ineligible(world: World) -> None:
    world.stripe.add_account(an_account(type="standard", losses_payments="stripe"))


def _no_consent(world: World) -> None:
    world.ledger.consents.revoke(ACCOUNT_ID, "ops@example.com")
    world.clock.advance(1)


def _far_away(world: World) -> None:
    world.stripe.add_account(an_account(country="BR", default_currency="brl"))


def _euro_account(world: World) -> None:
    world.stripe.add_account(an_account(default_currency="eur"))


def _unknown_account(world: World) -> None:
    world.stripe.accounts.clear()


def _unknown_refund(world: World) -> None:
    world.stripe.refunds.clear()


def _refund_in_euro(world: World) -> None:
    world.stripe.add_refund(a_refund(currency="eur"))


def _small_refund(world: World) -> None:
    world.stripe.add_refund(a_refund(amount=1000))


REFUSALS: list[tuple[FailureCode, Any, str]] = [
    (FailureCode.ACCOUNT_INELIGIBLE, _ineligible, a_body()),
    (FailureCode.CONSENT_MISSING, _no_consent, a_body()),
    (FailureCode.REGION_UNSUPPORTED, _far_away, a_body()),
    (FailureCode.CURRENCY_MISMATCH, _euro_account, a_body()),
    (FailureCode.AMOUNT_EXCEEDS_LIMIT, lambda _: None, a_body(amount=10_000_001)),
    (FailureCode.ACCOUNT_NOT_FOUND, _unknown_account, a_body()),
    (FailureCode.REFUND_NOT_FOUND, _unknown_refund, a_recovery_body()),
    (FailureCode.REFUND_CURRENCY_MISMATCH, _refund_in_euro, a_recovery_body()),
    (FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND, _small_refund, a_recovery_body(amount=2500)),
]


@pytest.mark.parametrize(
    ("code", "arrange", "body"), REFUSALS, ids=[str(code) for code, _, _ in REFUSALS]
)
def test_a_refused_debit_announces_its_failure_code_and_never_calls_stripe_to_charge(
    world: World, code: FailureCode, arrange: Any, body: str
) -> None:
    # Given a world where one rule fails
    arrange(world)

    # When the debit is handled
    result = handle(world, body)

    # Then one DebitFailed names that rule, and no charge was attempted
    assert result is Result.FAILED
    assert [e.event_type for e in world.publisher.published] == [FAILED_TYPE]
    assert failure_code(world) == code
    assert world.publisher.data()["retry_may_succeed"] is code.retry_may_succeed
    assert world.stripe.debit_calls == []
    # And the ledger records the refusal
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert (record.status, record.failure_code) == (Status.FAILED, code)


def test_stripe_refusing_for_lack_of_balance_is_announced_as_insufficient_balance(
    world: World,
) -> None:
    # Given an account whose balance Stripe finds too low
    world.stripe.balances[(ACCOUNT_ID, "usd")] = 1000

    # When a debit of 25.00 USD is handled (no pre-check)
    result = handle(world, a_body())

    # Then Stripe was asked once and its refusal is announced with Stripe's details
    assert result is Result.FAILED
    assert len(world.stripe.debit_calls) == 1
    data = world.publisher.data()
    assert data["code"] == FailureCode.INSUFFICIENT_BALANCE
    assert data["stripe_error"]["code"] == "balance_insufficient"
    assert status_of(world) is Status.FAILED
    assert world.stripe.balance_of(ACCOUNT_ID) == 1000


def test_with_the_balance_precheck_on_a_too_small_balance_is_refused_before_any_charge(
    world: World,
) -> None:
    # Given the pre-check is on and the account holds 10.00 USD
    world.config = HandlerConfig(balance_precheck=True)
    world.stripe.balances[(ACCOUNT_ID, "usd")] = 1000

    # When a debit of 25.00 USD is handled
    result = handle(world, a_body())

    # Then it is refused as insufficient_balance without a charge
    assert result is Result.FAILED
    assert failure_code(world) == FailureCode.INSUFFICIENT_BALANCE
    assert world.stripe.debit_calls == []


# --- duplicates and conflicts ---------------------------------------------------------------


@pytest.mark.parametrize("outcome", ["succeeded", "failed"])
def test_a_duplicate_of_a_finished_request_re_emits_the_same_event_without_calling_stripe(
    world: World, outcome: str
) -> None:
    # Given a request that has finished (succeeded, or failed at Stripe)
    if outcome == "failed":
        world.stripe.fail_next(stripe_refusal(FailureCode.STRIPE_REJECTED, "card_declined"))
    handle(world, a_body())
    calls, first = len(world.stripe.debit_calls), world.publisher.published[0]

    # When the same command arrives again
    result = handle(world, a_body(), owner="worker-2")

    # Then its recorded event is published again, with the same id, and Stripe is left alone
    assert result is Result.REEMITTED
    assert world.publisher.published == [first, first]
    assert len(world.stripe.debit_calls) == calls
    assert status_of(world) == outcome


def test_a_resend_differing_only_in_requested_at_is_a_duplicate_not_a_conflict(
    world: World,
) -> None:
    # Given a finished request
    handle(world, a_body(requested_at="2026-11-15T10:00:00Z"))

    # When the producer resends the same intent with another requested_at
    result = handle(world, a_body(requested_at="2026-11-15T11:00:00Z"))

    # Then it is a duplicate
    assert result is Result.REEMITTED
    assert len(world.stripe.debit_calls) == 1


def test_the_same_request_id_with_other_content_is_a_conflict_and_the_first_command_stands(
    world: World,
) -> None:
    # Given a request that succeeded
    handle(world, a_body())
    before = world.ledger.requests.get("req-1")
    original = world.publisher.published[0]

    # When another command reuses its request_id for another amount
    result = handle(world, a_body(amount=9999))

    # Then an idempotency_conflict is announced under an id of its own
    assert result is Result.CONFLICT
    conflict = world.publisher.published[-1]
    assert conflict.event_type == FAILED_TYPE
    assert conflict.event_id != original.event_id
    assert failure_code(world) == FailureCode.IDEMPOTENCY_CONFLICT
    assert world.publisher.data()["amount"] == 9999
    # And neither Stripe nor the original record moved
    assert len(world.stripe.debit_calls) == 1
    assert world.ledger.requests.get("req-1") == before


# --- bad input ------------------------------------------------------------------------------


def test_an_invalid_body_with_a_readable_request_id_is_answered_with_invalid_request(
    world: World,
) -> None:
    # Given a command whose currency is not an ISO code
    body = a_body(currency="dollars")

    # When it is handled
    result = handle(world, body)

    # Then DebitFailed(invalid_request) names the field, and echoes what was readable
    assert result is Result.FAILED
    data = world.publisher.data()
    assert data["code"] == FailureCode.INVALID_REQUEST
    assert [e["field"] for e in data["field_errors"]] == ["currency"]
    assert (data["request_id"], data["account"], data["amount"]) == ("req-1", ACCOUNT_ID, 2500)
    assert world.stripe.debit_calls == []
    # And no request was recorded, so a corrected resend is still handled
    assert world.ledger.requests.get("req-1") is None
    assert handle(world, a_body()) is Result.SUCCEEDED


@pytest.mark.parametrize(
    "body",
    [b"\xff\xfe", b"[1, 2]", b"{}", b'{"request_id": "has spaces"}', b"not json"],
    ids=["not-utf8", "array", "no-request-id", "bad-request-id", "not-json"],
)
def test_an_unreadable_body_raises_undeliverable_and_touches_nothing(
    world: World, body: bytes
) -> None:
    # Given a body with no usable request_id
    # When it is handled
    # Then it is undeliverable (for the dead-letter queue), and nothing was sent anywhere
    with pytest.raises(Undeliverable):
        handle(world, body)
    assert world.publisher.published == []
    assert world.stripe.debit_calls == []


def test_an_invalid_body_with_a_lone_surrogate_in_a_field_is_still_answered(
    world: World,
) -> None:
    # Given valid UTF-8 JSON whose account is the escape \ud800 (a lone surrogate)
    body = b'{"request_id": "req-1", "account": "\\ud800", "amount": 5}'

    # When it is handled
    result = handle(world, body)

    # Then the producer hears invalid_request like for any other invalid field
    assert result is Result.FAILED
    assert failure_code(world) == FailureCode.INVALID_REQUEST


# --- retries: transient, unknown outcome, leases ----------------------------------------------


def test_after_a_transient_stripe_failure_the_retry_charges_without_asking_the_policy_again(
    world: World,
) -> None:
    # Given Stripe fails transiently on the first charge
    world.stripe.fail_next(TransientFailure("503 from Stripe"))
    with pytest.raises(TransientFailure):
        handle(world, a_body(), owner="task:1")
    assert status_of(world) is Status.ATTEMPTING
    assert world.publisher.published == []
    world.ledger.requests.release("req-1", "task:1")  # as the task does before a retry

    # And meanwhile the policy would now refuse: consent revoked, account ineligible
    world.ledger.consents.revoke(ACCOUNT_ID, "ops@example.com")
    world.stripe.add_account(an_account(type="standard", losses_payments="stripe"))
    world.clock.advance(30)
    reads_before_retry = len(world.stripe.reads)

    # When the task retries the same body
    result = handle(world, a_body(), owner="task:2")

    # Then the decision taken before stands: the debit is charged with the same key
    assert result is Result.SUCCEEDED
    assert world.stripe.idempotency_keys == [idempotency_key("req-1")] * 2
    assert len(world.stripe.reads) == reads_before_retry  # no facts were read again
    assert status_of(world) is Status.SUCCEEDED
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.attempts == 2


def test_a_lost_response_then_a_retry_moves_the_money_exactly_once(world: World) -> None:
    # Given Stripe moves the money but the answer is lost
    world.stripe.balances[(ACCOUNT_ID, "usd")] = 10_000
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    with pytest.raises(OutcomeUnknown):
        handle(world, a_body(), owner="task:1")
    assert status_of(world) is Status.ATTEMPTING
    assert world.publisher.published == []

    # When the task retries after its lease ran out
    world.clock.advance(HandlerConfig().lease_seconds + 1)
    result = handle(world, a_body(), owner="task:2")

    # Then Stripe replayed the one payment; the account lost 25.00 USD once
    assert result is Result.SUCCEEDED
    assert len(world.stripe.payments) == 1
    assert world.stripe.balance_of(ACCOUNT_ID) == 7_500
    assert world.stripe.idempotency_keys == [idempotency_key("req-1")] * 2
    assert world.publisher.data()["payment"] == "py_Fake1"


def test_a_second_worker_is_told_busy_while_the_lease_holds_and_takes_over_once_it_expires(
    world: World,
) -> None:
    # Given worker-1 left the request attempting, its lease still valid
    world.stripe.fail_next(TransientFailure("timeout"))
    with pytest.raises(TransientFailure):
        handle(world, a_body(), owner="worker-1")

    # When worker-2 gets the command before the lease ends
    world.clock.advance(HandlerConfig().lease_seconds - 1)
    # Then it is busy, and Stripe is not called again
    with pytest.raises(RequestBusy):
        handle(world, a_body(), owner="worker-2")
    assert len(world.stripe.debit_calls) == 1

    # When the lease has expired
    world.clock.advance(2)
    # Then worker-2 takes over and finishes the debit
    assert handle(world, a_body(), owner="worker-2") is Result.SUCCEEDED
    assert len(world.stripe.payments) == 1


# --- refund recoveries ----------------------------------------------------------------------


def test_a_second_recovery_that_would_exceed_the_refund_is_refused(world: World) -> None:
    # Given a refund of 50.00 USD of which 30.00 was recovered
    assert handle(world, a_recovery_body(request_id="rec-1", amount=3000)) is Result.SUCCEEDED

    # When another recovery asks for 30.00
    result = handle(world, a_recovery_body(request_id="rec-2", amount=3000))

    # Then it is refused, and only the first was charged
    assert result is Result.FAILED
    assert failure_code(world) == FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND
    assert [c.request_id for c in world.stripe.debit_calls] == ["rec-1"]
    assert world.ledger.requests.reserved_for_refund(REFUND_ID) == 3000


def test_a_recovery_that_races_past_the_policy_is_stopped_by_the_budget_reservation(
    world: World,
) -> None:
    # Given rec-2's policy has read the budget (nothing reserved yet), and rec-1 slips in
    # and recovers 30.00 of the 50.00 before rec-2 reserves its own 30.00
    world.config = HandlerConfig(balance_precheck=True)  # the balance is read last
    first: list[Result] = []
    world.stripe.on_balance_read = lambda: first.append(
        handle(world, a_recovery_body(request_id="rec-1", amount=3000), "worker-1")
    )

    # When rec-2 goes on to begin its attempt
    result = handle(world, a_recovery_body(request_id="rec-2", amount=3000), owner="worker-2")

    # Then rec-1 succeeded, rec-2 is refused as exceeding the refund, and never charged
    assert first == [Result.SUCCEEDED]
    assert result is Result.FAILED
    assert failure_code(world) == FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND
    assert [c.request_id for c in world.stripe.debit_calls] == ["rec-1"]
    assert world.ledger.requests.reserved_for_refund(REFUND_ID) == 3000
    assert status_of(world, "rec-2") is Status.FAILED


def test_a_failed_recovery_gives_its_reservation_back_so_a_later_one_fits(world: World) -> None:
    # Given a recovery of 40.00 of a 50.00 refund that Stripe refuses
    world.stripe.fail_next(stripe_refusal(FailureCode.STRIPE_REJECTED, "transfers_not_allowed"))
    assert handle(world, a_recovery_body(request_id="rec-1", amount=4000)) is Result.FAILED
    assert world.ledger.requests.reserved_for_refund(REFUND_ID) == 0

    # When another recovery of 40.00 follows
    result = handle(world, a_recovery_body(request_id="rec-2", amount=4000))

    # Then it fits, and is charged
    assert result is Result.SUCCEEDED
    assert world.ledger.requests.reserved_for_refund(REFUND_ID) == 4000
    assert world.publisher.data()["refund"] == REFUND_ID


# --- the outbox when the broker is away -----------------------------------------------------


def test_with_the_broker_down_the_outcome_is_kept_and_the_relay_publishes_it_exactly_once(
    world: World,
) -> None:
    # Given the broker refuses every publish
    world.publisher.down = True

    # When a debit succeeds
    assert handle(world, a_body()) is Result.SUCCEEDED

    # Then the outcome is recorded and its event waits, unsent, in the outbox
    assert status_of(world) is Status.SUCCEEDED
    assert world.publisher.published == []
    [pending] = world.ledger.outbox.for_request("req-1")
    assert not pending.sent

    # When the broker is back and the relay runs twice after the grace period
    world.publisher.down = False
    world.clock.advance(GRACE_SECONDS + 1)
    sent = [relay_once(world.ledger, world.publisher) for _ in range(2)]

    # Then the event was published once, and is marked sent
    assert sent == [1, 0]
    assert world.publisher.ids == [pending.event.event_id]
    assert json.loads(world.publisher.published[0].body)["type"] == SUCCEEDED_TYPE
    assert world.ledger.outbox.count_unsent() == 0
    assert all(p.sent for p in world.ledger.outbox.for_request("req-1"))


def test_the_relay_leaves_young_events_to_their_inline_publish(world: World) -> None:
    # Given an event written moments ago while the broker was down
    world.publisher.down = True
    handle(world, a_body())
    world.publisher.down = False

    # When the relay runs within the grace period
    sent = relay_once(world.ledger, world.publisher)

    # Then it leaves the event alone
    assert sent == 0
    assert world.ledger.outbox.count_unsent() == 1


def test_the_relay_stops_at_the_first_failed_publish_and_keeps_the_rest(world: World) -> None:
    # Given two unsent events and a broker that is still down
    world.publisher.down = True
    handle(world, a_body(request_id="req-1"))
    handle(world, a_body(request_id="req-2"))
    world.clock.advance(GRACE_SECONDS + 1)

    # When the relay runs
    sent = relay_once(world.ledger, world.publisher)

    # Then nothing is marked sent
    assert sent == 0
    assert world.ledger.outbox.count_unsent() == 2


def test_a_duplicate_after_a_failed_publish_sends_the_recorded_event_once(world: World) -> None:
    # Given a success whose event could not be published
    world.publisher.down = True
    handle(world, a_body())
    world.publisher.down = False

    # When the command is redelivered
    result = handle(world, a_body())

    # Then the recorded event is published (once) and marked sent
    assert result is Result.REEMITTED
    assert len(world.publisher.published) == 1
    assert world.ledger.outbox.count_unsent() == 0


def test_a_worker_beaten_to_the_outcome_sends_the_event_the_other_worker_left_unsent(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given another worker records the outcome while this one waits for Stripe, and could
    # not publish its event (the broker was away for it)
    charge = world.stripe.create_debit
    theirs = OutboxEvent("evt-theirs", "req-1", SUCCEEDED_TYPE, SUCCEEDED_ROUTING_KEY, "{}")

    def racing_charge(debit: DebitCharge) -> Payment:
        payment = charge(debit)
        world.ledger.requests.record_succeeded(
            "req-1", "worker-2", Success(payment.id, None, None), theirs
        )
        return payment

    monkeypatch.setattr(world.stripe, "create_debit", racing_charge)

    # When this worker then tries to record the same outcome
    result = handle(world, a_body())

    # Then its own event is not written; the other worker's is published and marked sent
    assert result is Result.SUCCEEDED
    assert world.publisher.ids == ["evt-theirs"]
    assert [(p.event.event_id, p.sent) for p in world.ledger.outbox.for_request("req-1")] == [
        ("evt-theirs", True)
    ]


def test_stripe_is_not_charged_for_an_account_that_stripe_does_not_know(world: World) -> None:
    # Given Stripe answers the account read with "no such account"
    world.stripe.accounts.clear()
    world.stripe.add_account(replace(an_account(), account_id="acct_1Other"))

    # When a debit of the unknown account is handled
    handle(world, a_body())

    # Then the failure carries Stripe's error and no charge was made
    data = world.publisher.data()
    assert data["code"] == FailureCode.ACCOUNT_NOT_FOUND
    assert data["stripe_error"]["code"] == "resource_missing"
    assert world.stripe.debit_calls == []
