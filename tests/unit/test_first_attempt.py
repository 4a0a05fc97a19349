"""A command's first attempt runs straight from the intake; only a command that needs another
attempt becomes a `process_debit` task, and the intake settles the command by the answer."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from worker.bootstrap import Runtime
from worker.errors import TransientFailure
from worker.first_attempt import Settle, run_first_attempt
from worker.ledger import Status
from worker.settings import Settings, load_settings
from worker.tasks import PROCESS_TASK

from .fakes import World, a_body, a_world

TASK_ID = "req-1:0123456789ab"
HEADERS = {"x-debit-received-at": "1700000000.000"}


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
    settle = run_first_attempt(app, a_runtime(world, app), TASK_ID, a_body(), HEADERS)
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
    settle = run_first_attempt(app, a_runtime(world, app), TASK_ID, a_body(), HEADERS)
    # Then attempt 2 is a process_debit task carrying the same command, headers and task id
    # (so the same lease owner), delayed at least as long as Stripe asked
    assert settle is Settle.ACK
    [task] = app.sent
    assert task["name"] == PROCESS_TASK
    assert task["args"] == (a_body(), HEADERS)
    assert task["task_id"] == TASK_ID
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
    settle = run_first_attempt(app, a_runtime(world, app), TASK_ID, a_body(), HEADERS)
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
    settle = run_first_attempt(app, runtime, TASK_ID, a_body(), HEADERS)
    # Then the request needs reconciliation and no further attempt is scheduled
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
    assert settle is Settle.ACK
    assert app.sent == []
