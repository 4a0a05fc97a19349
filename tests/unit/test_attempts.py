"""One attempt engine: a command's first attempt runs straight from the intake; only a request
that needs another attempt becomes a `process_debit` task naming its request id, and the
intake settles the command by the answer. What follows an error is one pure function."""

from __future__ import annotations

import dataclasses
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError
from sqlalchemy.exc import TimeoutError as SQLAlchemyTimeout

from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.database import make_engine
from worker.bootstrap import Runtime
from worker.domain.errors import OutcomeUnknown, RequestBusy, TransientFailure, Unresolvable
from worker.handlers import resume
from worker.ops.observability import configure_logging
from worker.settings import Settings, load_settings
from worker.transport.attempts import (
    PROCESS_TASK,
    NextStep,
    Settle,
    next_step,
    run_attempt,
    run_first_attempt,
)

from .fakes import PRODUCER, World, a_body, a_world
from .test_json_logs import root_output


class RecordingCelery(Celery):
    """Celery whose task messages are recorded instead of sent; `refuse` makes the broker
    refuse them."""

    def __init__(self) -> None:
        super().__init__("first-attempt-test", broker="memory://", set_as_current=False)
        self.sent: list[dict[str, Any]] = []
        self.refuse: Exception | None = None

    def send_task(self, name: str, args: Any = None, **options: Any) -> Any:  # type: ignore[override]
        if self.refuse is not None:
            raise self.refuse
        self.sent.append({"name": name, "args": args, **options})
        return None


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def a_runtime(world: World, app: Celery, **overrides: object) -> Runtime:
    settings: Settings = load_settings(stripe_api_key="sk_test_x", **overrides)
    return Runtime(settings, app, factory=lambda _settings, _app: world.services())


def test_a_command_that_ends_in_its_first_attempt_is_acked_and_never_becomes_a_task(
    world: World,
) -> None:
    # Given a command Stripe accepts
    app = RecordingCelery()
    # When its first attempt runs
    settle = run_first_attempt(app, a_runtime(world, app), world.delivery(a_body()))
    # Then the debit is recorded, its event published, the command acked, and no task sent
    assert settle is Settle.ACK
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert len(world.publisher.published) == 1
    assert app.sent == []


def test_a_transient_failure_schedules_attempt_two_as_a_task_with_the_same_id_then_acks(
    world: World,
) -> None:
    # Given Stripe answers the first call with a rate limit that asks for 7 s
    world.stripe.fail_next(TransientFailure("Stripe rate limit", retry_after=7))
    app = RecordingCelery()
    # When the first attempt runs
    settle = run_first_attempt(app, a_runtime(world, app), world.delivery(a_body()))
    # Then attempt 2 is a process_debit task naming the request only, with the lease owner's
    # task id, delayed at least as long as Stripe asked
    assert settle is Settle.ACK
    [task] = app.sent
    assert task["name"] == PROCESS_TASK
    assert task["args"] == ("req-1",)
    assert task["task_id"].startswith("req-1:")
    assert task["retries"] == 1
    assert task["countdown"] >= 7
    # And the lease is released for it, and no money moved yet
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.ATTEMPTING
    assert record.lease_until is None
    assert not world.stripe.payments


def test_a_command_whose_next_attempt_cannot_be_scheduled_goes_back_to_its_queue(
    world: World,
) -> None:
    # Given a transient Stripe failure, and a broker that refuses the next attempt's task
    world.stripe.fail_next(TransientFailure("Stripe unavailable"))
    app = RecordingCelery()
    app.refuse = OperationalError("connection reset")
    # When the first attempt runs
    settle = run_first_attempt(app, a_runtime(world, app), world.delivery(a_body()))
    # Then the command is requeued rather than acked and forgotten
    assert settle is Settle.REQUEUE
    assert app.sent == []


def test_a_first_attempt_out_of_attempts_escalates_and_acks_without_another_task(
    world: World,
) -> None:
    # Given a worker allowed a single attempt, and a transient Stripe failure
    world.stripe.fail_next(TransientFailure("Stripe unavailable"))
    app = RecordingCelery()
    runtime = a_runtime(world, app, max_attempts=1)
    # When the first attempt runs (its dead-letter copy has nowhere to go: memory broker)
    settle = run_first_attempt(app, runtime, world.delivery(a_body()))
    # Then the request needs reconciliation and no further attempt is scheduled
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
    assert settle is Settle.ACK
    assert app.sent == []


# --- what follows an error: one pure function --------------------------------------------

SETTINGS = load_settings(
    stripe_api_key="sk_test_x", max_attempts=5, retry_base_seconds=1, retry_max_seconds=60
)


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (TransientFailure("timeout"), "retry"),
        (OutcomeUnknown("connection reset"), "retry"),
        (RequestBusy("held"), "retry"),
        (SQLAlchemyTimeout("pool"), "retry"),
        (OperationalError("broker"), "retry"),
        (Unresolvable("stored 500"), "escalate"),
        (KeyError("a bug"), "escalate"),
        (ValueError("a bug"), "escalate"),
    ],
    ids=lambda v: type(v).__name__ if isinstance(v, Exception) else str(v),
)
def test_only_the_errors_it_names_are_retried(error: Exception, expected: str) -> None:
    assert next_step(error, 1, SETTINGS).kind == expected


def test_the_last_attempt_escalates_except_a_busy_request_left_to_its_lease_holder() -> None:
    assert next_step(TransientFailure("timeout"), 5, SETTINGS) == NextStep("escalate")
    assert next_step(RequestBusy("held"), 5, SETTINGS) == NextStep("leave")


def test_a_retry_waits_at_least_what_stripe_asked_and_grows_with_the_attempt() -> None:
    rng = random.Random(7)
    asked = next_step(TransientFailure("429", retry_after=30), 1, SETTINGS, rng)
    assert asked.kind == "retry"
    assert asked.countdown >= 30
    # full jitter between half and all of base x 2^(n-1), capped: attempt 4 waits 4-8 s
    later = [next_step(TransientFailure("t"), 4, SETTINGS, rng).countdown for _ in range(50)]
    assert min(later) >= 4
    assert max(later) <= 8


# --- later attempts: the request id only -------------------------------------------------


@dataclass(frozen=True)
class SecondAttempt:
    number: int = 2
    task_id: str = "req-1:0123456789ab"

    def retry_in(self, countdown: int, error: Exception) -> str:
        return f"retry in {countdown} s after {error}"


def test_a_later_attempt_resumes_the_request_from_the_ledger_by_its_id(world: World) -> None:
    # Given a first attempt that left the request attempting after a transient failure
    world.stripe.fail_next(TransientFailure("timeout"))
    app = RecordingCelery()
    runtime = a_runtime(world, app)
    assert run_first_attempt(app, runtime, world.delivery(a_body())) is Settle.ACK
    [task] = app.sent
    # When attempt 2 runs with nothing but the request id
    outcome = run_attempt(
        SecondAttempt(), runtime, "req-1", lambda svc, owner: resume("req-1", svc, owner)
    )
    # Then the debit is made once, from the command the ledger holds
    assert outcome == "succeeded"
    assert task["args"] == ("req-1",)
    assert len(world.stripe.payments) == 1
    assert world.stripe.debit_calls[-1].amount == 2500


def test_a_later_attempt_for_a_request_the_ledger_does_not_hold_ends_without_a_retry(
    world: World,
) -> None:
    app = RecordingCelery()
    outcome = run_attempt(
        SecondAttempt(),
        a_runtime(world, app),
        "never-seen",
        lambda svc, owner: resume("never-seen", svc, owner),
    )
    assert outcome == "unclaimed"
    assert world.stripe.debit_calls == []


def test_a_command_that_could_not_be_claimed_goes_back_to_its_queue_not_to_a_task(
    world: World, tmp_path: Path
) -> None:
    # Given the ledger is unreachable when the command arrives
    app = RecordingCelery()
    unreachable = Ledger.on(make_engine(f"sqlite:///{tmp_path}/missing/dir/ledger.db"))
    services = dataclasses.replace(world.services(), ledger=unreachable)
    runtime = Runtime(
        load_settings(stripe_api_key="sk_test_x"), app, factory=lambda _s, _a: services
    )
    # When its first attempt runs / Then the command is given back: a later attempt could
    # not read it from the ledger, so none is scheduled
    assert run_first_attempt(app, runtime, world.delivery(a_body())) is Settle.REQUEUE
    assert app.sent == []
    assert world.stripe.debit_calls == []


def test_a_body_naming_no_request_is_dead_lettered_by_the_first_attempt(world: World) -> None:
    # Given a message that is not JSON, whose dead letter the (memory) broker takes
    app = RecordingCelery()
    # When its first attempt runs / Then it is settled without any attempt at a debit
    settle = run_first_attempt(app, a_runtime(world, app), world.delivery("not json"))
    assert settle is Settle.ACK
    assert world.stripe.debit_calls == []
    assert app.sent == []


def test_an_attempts_json_log_lines_carry_the_requests_fields(world: World) -> None:
    # Given JSON logs and a command Stripe accepts
    app = RecordingCelery()
    runtime = a_runtime(world, app, log_format="json")
    with root_output() as output:
        configure_logging(runtime.settings)
        # When its first attempt runs
        run_first_attempt(app, runtime, world.delivery(a_body()))
        lines = [json.loads(line) for line in output.getvalue().splitlines()]
    # Then its lines name the request, the producer and the attempt, and the last the outcome
    ours = [line for line in lines if line.get("request_id") == "req-1"]
    assert ours
    assert {(line["producer"], line["attempt"]) for line in ours} == {(PRODUCER.producer, 1)}
    [succeeded] = [line for line in ours if "outcome" in line]
    assert succeeded["outcome"] == "succeeded"
    assert succeeded["message"].startswith("request req-1 succeeded")


def test_a_refusal_logs_its_outcome_and_code(world: World) -> None:
    # Given JSON logs and a command for an account Stripe does not know
    app = RecordingCelery()
    runtime = a_runtime(world, app, log_format="json")
    with root_output() as output:
        configure_logging(runtime.settings)
        run_first_attempt(app, runtime, world.delivery(a_body(account="acct_1Unknown000000001")))
        lines = [json.loads(line) for line in output.getvalue().splitlines()]
    [refused] = [line for line in lines if "outcome" in line]
    assert (refused["outcome"], refused["code"], refused["request_id"]) == (
        "failed",
        "account_not_found",
        "req-1",
    )
