"""Signed commands through the handler: an unauthorised one is never claimed, and each
producer's policy (reasons, per-debit and rolling-day maximums) holds, durably."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from schemas.codes import FailureCode
from schemas.signing import Signer
from worker.adapters.ledger import Status
from worker.domain.errors import OutcomeUnknown
from worker.domain.producer_limits import ProducerPolicy
from worker.handlers import Result

from .fakes import PRODUCER, World, a_body, a_world, an_authenticator, stripe_refusal

POLICY = ProducerPolicy(
    allowed_reasons=frozenset({"platform_charge"}),  # type: ignore[arg-type]
    max_per_debit={"usd": 5000},
    max_per_day={"usd": 10000},
)


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def handle(
    world: World, body: str, signer: Signer | None = PRODUCER, *, key_known: bool = True
) -> Result:
    world.auth = an_authenticator(POLICY)
    if not key_known:  # the producer's key removed from DEBIT_WORKER_PRODUCER_KEYS
        world.auth = dataclasses.replace(world.auth, keys={})
    return world.handle(body, headers=world.signed(body, signer) if signer else {})


def code(world: World) -> str:
    return str(world.publisher.data()["code"])


def test_an_unsigned_command_is_refused_before_the_ledger_or_stripe_sees_it(
    world: World,
) -> None:
    # Given signatures are required / When an unsigned command arrives
    result = handle(world, a_body(), signer=None)
    # Then the producer hears unauthorized, the request id is not used up, Stripe was not asked
    assert result is Result.FAILED
    assert code(world) == FailureCode.UNAUTHORIZED
    assert world.ledger.requests.get("req-1") is None
    assert world.stripe.reads == []
    assert world.stripe.debit_calls == []
    # And the same request id, signed, then goes through
    assert handle(world, a_body()) is Result.SUCCEEDED


def test_a_reason_the_producer_may_not_use_is_refused(world: World) -> None:
    handle(world, a_body(reason="adjustment"))
    assert code(world) == FailureCode.PRODUCER_LIMIT_EXCEEDED
    assert world.stripe.debit_calls == []


def test_an_amount_over_the_producers_per_debit_maximum_is_refused(world: World) -> None:
    handle(world, a_body(amount=5001))
    assert code(world) == FailureCode.PRODUCER_LIMIT_EXCEEDED
    assert world.stripe.debit_calls == []


def test_a_currency_without_a_producer_maximum_is_refused(world: World) -> None:
    handle(world, a_body(currency="eur"))
    assert code(world) == FailureCode.PRODUCER_LIMIT_EXCEEDED


def test_the_daily_maximum_holds_and_a_redelivery_does_not_count_twice(world: World) -> None:
    # Given 2 x 50.00 of a 100.00 daily maximum succeeded, one of them delivered twice
    assert handle(world, a_body(request_id="d1", amount=5000)) is Result.SUCCEEDED
    assert handle(world, a_body(request_id="d1", amount=5000)) is Result.REEMITTED
    assert handle(world, a_body(request_id="d2", amount=5000)) is Result.SUCCEEDED
    # When a third debit asks for 0.01 more
    assert handle(world, a_body(request_id="d3", amount=1)) is Result.FAILED
    # Then it is refused, and Stripe moved exactly the maximum
    assert code(world) == FailureCode.PRODUCER_LIMIT_EXCEEDED
    assert sum(c.amount for c in world.stripe.debit_calls) == 10000
    # And 24 hours later there is room again
    world.clock.advance(24 * 3600 + 1)
    assert handle(world, a_body(request_id="d4", amount=5000)) is Result.SUCCEEDED


def test_a_debit_that_fails_at_stripe_gives_its_daily_room_back(world: World) -> None:
    # Given a 50.00 debit that Stripe refuses after the room was reserved
    world.stripe.fail_next(stripe_refusal(FailureCode.STRIPE_REJECTED, "card_declined"))
    assert handle(world, a_body(request_id="f1", amount=5000)) is Result.FAILED
    # When two more debits use the whole day's room / Then both succeed
    assert handle(world, a_body(request_id="f2", amount=5000)) is Result.SUCCEEDED
    assert handle(world, a_body(request_id="f3", amount=5000)) is Result.SUCCEEDED


def test_a_retried_attempt_keeps_its_reservation_without_taking_another(world: World) -> None:
    # Given a debit whose Stripe answer was lost after its room was reserved
    world.stripe.lose_next_response(OutcomeUnknown("timeout"))
    with pytest.raises(OutcomeUnknown):
        handle(world, a_body(request_id="r1", amount=5000))
    world.clock.advance(200)  # the lease expires
    # When it is retried / Then it succeeds, and only one more 50.00 fits today
    assert handle(world, a_body(request_id="r1", amount=5000)) is Result.SUCCEEDED
    assert handle(world, a_body(request_id="r2", amount=5000)) is Result.SUCCEEDED
    assert handle(world, a_body(request_id="r3", amount=1)) is Result.FAILED
    record = world.ledger.requests.get("r1")
    assert record is not None
    assert record.status is Status.SUCCEEDED


def test_an_attempt_in_flight_carries_on_after_its_key_is_removed(world: World) -> None:
    # Given a signed debit whose Stripe answer was lost (the money may have moved)
    world.stripe.lose_next_response(OutcomeUnknown("timeout"))
    with pytest.raises(OutcomeUnknown):
        handle(world, a_body(request_id="k1", amount=1000))
    world.clock.advance(200)
    # When the operator removes the key before the retry
    result = handle(world, a_body(request_id="k1", amount=1000), key_known=False)
    # Then the retry still settles it, with the one payment Stripe made
    assert result is Result.SUCCEEDED
    assert len(world.stripe.payments) == 1


def test_a_finished_request_replayed_with_a_removed_key_only_re_emits_its_outcome(
    world: World,
) -> None:
    # Given a request that succeeded
    assert handle(world, a_body(request_id="k2", amount=1000)) is Result.SUCCEEDED
    first = world.publisher.published[-1]
    # When the same command comes back after its key was removed (a replay, or the janitor)
    result = handle(world, a_body(request_id="k2", amount=1000), key_known=False)
    # Then its recorded outcome is sent again, with no second Stripe call and no new outcome
    assert result is Result.REEMITTED
    assert world.publisher.published[-1].event_id == first.event_id
    assert len(world.stripe.debit_calls) == 1
