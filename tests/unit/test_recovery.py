"""Fast recovery from a crash: a debit's lease is held by its process while the attempt runs
(renewed by the lease keeper), a worker that lost its lease never calls Stripe, the janitor
and the keeper run their first round as they start, and Stripe's "key in use" is a busy retry.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from schemas.commands import DebitRequested
from worker.adapters.ledger import Status
from worker.bootstrap import Runtime, attach
from worker.domain.errors import KeyInUse, OutcomeUnknown, RequestBusy
from worker.domain.types import DebitCharge, Payment, idempotency_key
from worker.handlers import HandlerConfig, Result, resume
from worker.ops.background import PeriodicStep
from worker.ops.lease_keeper import keep_leases
from worker.settings import load_settings
from worker.transport.attempts import next_step
from worker.transport.leases import LeaseRegistry

from .fakes import ACCOUNT_ID, FakeStripe, World, a_body, a_world

LEASE = HandlerConfig().lease_seconds


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


@dataclass
class LeasesSeenByStripe(FakeStripe):
    """A FakeStripe that notes which leases its caller's process held during each charge."""

    leases: LeaseRegistry | None = None
    seen: list[list[tuple[str, str]]] = field(default_factory=list)

    def create_debit(self, charge: DebitCharge) -> Payment:
        assert self.leases is not None
        self.seen.append(self.leases.held())
        return super().create_debit(charge)


# --- the lease, held while the attempt runs -------------------------------------------------


def test_a_debits_lease_is_held_for_renewal_during_its_stripe_call_and_not_after(
    tmp_path: Path,
) -> None:
    # Given a worker process whose Stripe notes the leases held while it charges
    world = a_world(tmp_path)
    stripe = LeasesSeenByStripe(clock=world.clock, accounts=world.stripe.accounts)
    world.stripe = stripe
    services = world.services()
    stripe.leases = services.leases

    # When a debit is handled, then one whose Stripe call fails transiently
    assert world.handle(a_body(), owner="p1:t1", services=services) is Result.SUCCEEDED
    stripe.fail_next(OutcomeUnknown("connection reset"))
    with pytest.raises(OutcomeUnknown):
        world.handle(a_body(request_id="req-2"), owner="p1:t2", services=services)

    # Then each lease was held during its own charge, and neither is held afterwards
    assert stripe.seen == [[("req-1", "p1:t1")], [("req-2", "p1:t2")]]
    assert services.leases.held() == []


def test_a_worker_that_lost_its_lease_while_deciding_does_not_call_stripe(world: World) -> None:
    # Given p1 deciding a debit (reading the balance last), stalled past its lease, while p2
    # takes the request over and charges it
    world.config = HandlerConfig(balance_precheck=True)
    taken_over: list[Result] = []

    def stall_and_take_over() -> None:
        world.clock.advance(LEASE + 1)
        taken_over.append(world.handle(a_body(), owner="p2:t1"))

    world.stripe.on_balance_read = stall_and_take_over

    # When p1 goes on to begin its attempt
    with pytest.raises(RequestBusy):
        world.handle(a_body(), owner="p1:t1")

    # Then only p2 called Stripe: one call, one payment
    assert taken_over == [Result.SUCCEEDED]
    assert len(world.stripe.debit_calls) == 1
    assert len(world.stripe.payments) == 1


def test_a_refusal_by_a_worker_that_lost_its_lease_never_lands_on_anothers_charge(
    world: World,
) -> None:
    # Given an account holding exactly 25.00 USD, and p1 deciding a 25.00 debit (reading the
    # balance last), stalled past its lease while p2 took the request over and charged it,
    # Stripe's answer to p2 lost
    world.config = HandlerConfig(balance_precheck=True)
    world.stripe.balances[(ACCOUNT_ID, "usd")] = 2500

    def stall_and_take_over() -> None:
        world.clock.advance(LEASE + 1)
        world.stripe.lose_next_response(OutcomeUnknown("connection reset"))
        with pytest.raises(OutcomeUnknown):
            world.handle(a_body(), owner="p2:t1")

    world.stripe.on_balance_read = stall_and_take_over

    # When p1 reads the emptied balance, refuses the debit and records the refusal
    with pytest.raises(RequestBusy):
        world.handle(a_body(), owner="p1:t1")

    # Then the refusal is not recorded over p2's attempt (money moved); resuming it later
    # finds the one payment under the key
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.ATTEMPTING
    world.clock.advance(LEASE + 1)
    assert resume("req-1", world.services(), "p3:t1") is Result.SUCCEEDED
    assert world.stripe.idempotency_keys == [idempotency_key("req-1")] * 2
    assert len(world.stripe.payments) == 1
    assert [e.event_type for e in world.publisher.published] == [
        "io.debit-worker.debit.succeeded.v1"
    ]


# --- the lease keeper -----------------------------------------------------------------------


def test_the_keeper_renews_what_its_process_holds_and_drops_a_lease_taken_over(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    # Given p1 holding two requests, one of which p2 took over after p1 stalled
    services = world.services()
    world.stripe.fail_next(OutcomeUnknown("timeout"), times=2)
    for request_id in ("req-1", "req-2"):
        with pytest.raises(OutcomeUnknown):
            world.handle(a_body(request_id=request_id), owner=f"p1:{request_id}")
        services.leases.hold(request_id, f"p1:{request_id}")
    world.clock.advance(LEASE + 1)
    world.ledger.requests.claim(_command("req-2"), "p2:t9", LEASE)

    # When p1's keeper runs a round
    with caplog.at_level(logging.WARNING, logger="worker.ops.lease_keeper"):
        done = keep_leases(world.ledger, services.leases, LEASE)

    # Then its own lease is renewed, the lost one is no longer held, and the loss is logged
    assert (done.renewed, done.lost) == (1, 1)
    assert services.leases.held() == [("req-1", "p1:req-1")]
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.lease_until is not None
    assert record.lease_until > world.clock()
    assert "lease of p1:req-2 was taken over by p2:t9" in caplog.text


def test_a_keeper_round_with_nothing_held_reads_nothing(world: World) -> None:
    # Given / When a process holding no lease runs a keeper round
    done = keep_leases(world.ledger, LeaseRegistry(), LEASE)
    # Then nothing was renewed or lost
    assert (done.renewed, done.lost) == (0, 0)


def test_a_lease_held_twice_by_one_owner_is_kept_until_both_attempts_end() -> None:
    # Given a task delivered twice, both attempts holding the same lease
    leases = LeaseRegistry()
    leases.hold("req-1", "p1:t1")
    leases.hold("req-1", "p1:t1")
    leases.hold("req-1", "p2:t2")  # another owner's attempt that found it busy

    # When the other owner's attempt and one of the two end
    leases.forget("req-1", "p2:t2")
    leases.forget("req-1", "p1:t1")

    # Then the lease is still renewed for the one still running, until it ends too
    assert leases.held() == [("req-1", "p1:t1")]
    leases.forget("req-1", "p1:t1")
    assert leases.held() == []


# --- first rounds at start ------------------------------------------------------------------


class _Parent:
    def __init__(self, app: Celery) -> None:
        self.app = app


class _Rounds(PeriodicStep):
    thread_name = "test-rounds"

    def __init__(self, parent: Any, *, at_start: bool) -> None:
        super().__init__(parent)
        self.first_round_at_start = at_start
        self.ran = threading.Event()

    def interval(self, runtime: Runtime) -> float:
        return 3600.0

    def run_round(self, runtime: Runtime) -> None:
        self.ran.set()


@pytest.mark.parametrize("at_start", [True, False])
def test_a_periodic_step_runs_its_first_round_at_start_only_when_asked(
    world: World, at_start: bool
) -> None:
    # Given a step whose interval is an hour, on a worker's app
    app = Celery("rounds-test", broker="memory://", set_as_current=False)
    settings = load_settings(stripe_api_key="sk_test_x")
    attach(app, Runtime(settings, app, factory=lambda _s, _a: world.services()))
    step = _Rounds(_Parent(app), at_start=at_start)

    # When it starts (and, asked for no first round, is stopped at once)
    step.start(_Parent(app))
    if at_start:
        step.ran.wait(timeout=30)
    step.stop(_Parent(app))

    # Then a first round ran only when asked for
    assert step.ran.is_set() is at_start


# --- Stripe's "key in use" ------------------------------------------------------------------


def test_a_key_in_use_is_retried_like_any_transient_failure() -> None:
    settings = load_settings(stripe_api_key="sk_test_x", max_attempts=5)
    assert next_step(KeyInUse("in use", retry_after=None), 1, settings).kind == "retry"
    assert next_step(KeyInUse("in use", retry_after=None), 5, settings).kind == "escalate"


def _command(request_id: str) -> DebitRequested:
    return DebitRequested.model_validate_json(a_body(request_id=request_id))
