"""Unknown outcomes, key expiry, the janitor and crash points (issue 6).

Stripe keeps an idempotency key 24 h: within that window an unknown outcome is settled by
repeating the call with the same key; near its end the request is escalated and never sent
again. The janitor finishes claims whose worker died.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.adapters.ledger import Status
from worker.adapters.rate_budget import Unlimited
from worker.adapters.stripe_gateway import StripeGateway
from worker.bootstrap import stripe_client
from worker.domain.errors import OutcomeUnknown, Unresolvable
from worker.domain.types import DebitCharge, idempotency_key
from worker.handlers import HandlerConfig, Result, resume
from worker.ops.crashpoints import EXIT_CODES
from worker.ops.janitor import janitor_once
from worker.sandbox import Faults, RunningSandbox, running_sandbox
from worker.settings import Settings, load_settings

from .fakes import World, a_body, a_world

HOUR = 3600.0


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def handle(world: World, owner: str, **changes: object) -> Result:
    return world.handle(a_body(**changes), owner)


def settings(**overrides: object) -> Settings:
    return load_settings(stripe_api_key="sk_test_x", **overrides)


# --- unknown outcomes and the key's 24 h ------------------------------------------------------


def test_an_unknown_outcome_is_settled_by_the_same_key_while_stripe_still_keeps_it(
    world: World,
) -> None:
    # Given Stripe moved the money but the answer was lost
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    with pytest.raises(OutcomeUnknown):
        handle(world, "task:1")

    # When the request is attempted again 19 hours later
    world.clock.advance(19 * HOUR)
    result = handle(world, "task:2")

    # Then the same key returns the one payment
    assert result is Result.SUCCEEDED
    assert world.stripe.idempotency_keys == [idempotency_key("req-1")] * 2
    assert len(world.stripe.payments) == 1


def test_near_the_keys_expiry_an_unknown_outcome_is_escalated_and_stripe_is_not_called_again(
    world: World,
) -> None:
    # Given an attempt whose outcome is unknown
    world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
    with pytest.raises(OutcomeUnknown):
        handle(world, "task:1")

    # When it comes back (a redelivery, a replay) 20 hours after the first attempt
    world.clock.advance(HandlerConfig().key_escalation_after_seconds)

    # Then it is declared unresolvable, and Stripe is not asked again
    with pytest.raises(Unresolvable):
        handle(world, "task:2")
    assert len(world.stripe.debit_calls) == 1


def test_an_escalated_request_past_the_key_margin_is_never_sent_again(world: World) -> None:
    # Given a request escalated after an unknown outcome
    world.stripe.lose_next_response(OutcomeUnknown("timeout"))
    with pytest.raises(OutcomeUnknown):
        handle(world, "task:1")
    world.ledger.requests.mark_needs_reconciliation("req-1", "task:1", "gave up")

    # When the producer resends it two days later (Stripe has forgotten the key)
    world.clock.advance(48 * HOUR)

    # Then the worker refuses to call Stripe: a new call could debit a second time
    with pytest.raises(Unresolvable):
        handle(world, "task:9")
    assert len(world.stripe.debit_calls) == 1
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION


# --- stored errors, through the real SDK and the sandbox -------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        yield server


def test_a_stored_server_error_replayed_for_the_key_is_unresolvable_not_retried_forever(
    sandbox: RunningSandbox,
) -> None:
    # Given Stripe answered the first debit with a 500, which it stores under the key
    sandbox.admin.reset()
    sandbox.admin.set_faults(Faults(script=("server_error",)))
    gateway = StripeGateway(
        stripe_client(
            load_settings(
                stripe_api_key=sandbox.api_key,
                stripe_api_base=sandbox.url,
                stripe_max_network_retries=0,
            )
        ),
        Unlimited(),
    )
    charge = DebitCharge(
        "req-500", "acct_1ExpressUS00000001", 100, "usd", "platform_charge", None, None
    )
    with pytest.raises(OutcomeUnknown) as first:
        gateway.create_debit(charge)
    assert not isinstance(first.value, Unresolvable)

    # When the same key is sent again
    # Then Stripe replays the stored 500, and the worker knows no repeat will tell more
    with pytest.raises(Unresolvable):
        gateway.create_debit(charge)
    assert sandbox.admin.state().payments == []


# --- the janitor ------------------------------------------------------------------------------


def test_the_janitor_re_enqueues_a_claim_whose_worker_died_once_its_lease_expired(
    world: World,
) -> None:
    # Given a worker that claimed a request and died before finishing it
    world.stripe.fail_next(OutcomeUnknown("process killed"))
    with pytest.raises(OutcomeUnknown):
        handle(world, "dead-worker")
    enqueued: list[str] = []
    config = settings(janitor_stale_after_seconds=600)

    # When the janitor runs while the lease still holds, then after it expired
    janitor_once(world.ledger, enqueued.append, config, world.clock())
    assert enqueued == []
    world.clock.advance(HandlerConfig().lease_seconds + 1)
    first = janitor_once(world.ledger, enqueued.append, config, world.clock())
    again = janitor_once(world.ledger, enqueued.append, config, world.clock())

    # Then the request is enqueued exactly once, by its id, and resuming it finishes the debit
    assert (first.requeued, again.requeued) == (1, 0)
    assert enqueued == ["req-1"]
    assert resume(enqueued[0], world.services(), "task:2") is Result.SUCCEEDED
    assert len(world.stripe.payments) == 1


def test_the_janitor_escalates_an_attempt_near_the_keys_expiry_and_leaves_finished_ones(
    world: World,
) -> None:
    # Given one request stuck attempting and one that succeeded
    world.stripe.fail_next(OutcomeUnknown("timeout"))
    with pytest.raises(OutcomeUnknown):
        handle(world, "w1")
    handle(world, "w1", request_id="req-2")
    enqueued: list[str] = []

    # When the janitor runs 20 hours after their first attempts
    world.clock.advance(20 * HOUR + 1)
    done = janitor_once(world.ledger, enqueued.append, settings(), world.clock())

    # Then the stuck one awaits an operator and is not enqueued; the finished one is untouched
    assert done.escalated == 1
    stuck, finished = world.ledger.requests.get("req-1"), world.ledger.requests.get("req-2")
    assert stuck is not None
    assert finished is not None
    assert (stuck.status, finished.status) == (Status.NEEDS_RECONCILIATION, Status.SUCCEEDED)
    assert enqueued == []


# --- crash points -----------------------------------------------------------------------------


@pytest.mark.parametrize("point", sorted(EXIT_CODES))
def test_a_crash_point_set_to_always_ends_the_process_with_its_own_status(point: str) -> None:
    # Given the harness asks for a crash at this point every time
    env = {**os.environ, "DEBIT_WORKER_CRASH_POINTS": f"{point}:1"}
    code = f"from worker.ops.crashpoints import crash_point; crash_point({point!r}); print('alive')"
    # When the process reaches it
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False)
    # Then it ends at once, with the status that names the point
    assert done.returncode == EXIT_CODES[point]
    assert done.stdout == b""


def test_without_the_variable_crash_points_do_nothing() -> None:
    env = {k: v for k, v in os.environ.items() if k != "DEBIT_WORKER_CRASH_POINTS"}
    code = (
        "from worker.ops.crashpoints import crash_point; crash_point('after_stripe'); print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=True)
    assert done.stdout.strip() == b"ok"
