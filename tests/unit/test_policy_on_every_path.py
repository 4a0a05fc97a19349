"""A producer's policy holds on every path a request can take, and a refusal that cannot be
recorded never turns into a dead letter that a replay could launder."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from celery import Celery

from schemas.codes import FailureCode
from schemas.commands import DebitRequested
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.database import make_engine
from worker.bootstrap import Runtime
from worker.domain.errors import RefusalNotRecorded, TransientFailure
from worker.domain.producer_limits import ProducerPolicy
from worker.handlers import Result, Services, resume
from worker.settings import load_settings
from worker.transport.attempts import Settle, run_attempt, run_first_attempt

from .fakes import PRODUCER, World, a_body, a_world, an_authenticator

DAILY_100_USD = ProducerPolicy(max_per_day={"usd": 10_000})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def signed_services(world: World, ledger: Ledger | None = None) -> Services:
    world.auth = an_authenticator(DAILY_100_USD)
    services = world.services()
    return dataclasses.replace(services, ledger=ledger) if ledger else services


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-debit-producer": PRODUCER.producer, "x-debit-signature": "v1=forged"}],
    ids=["janitor-re-enqueue-without-headers", "copy-with-a-bad-signature"],
)
def test_a_request_resumed_without_its_signature_is_decided_under_its_producers_limit(
    world: World, headers: dict[str, str]
) -> None:
    # Given billing's 200.00 debit (its daily maximum is 100.00), claimed, whose worker died
    # before the rules were asked
    body = a_body(request_id="big-1", amount=20_000)
    world.ledger.requests.claim(
        DebitRequested.model_validate_json(body), "dead-worker", 0.0, producer=PRODUCER.producer
    )
    world.clock.advance(1)  # its lease has run out
    # When it comes back without billing's valid signature
    result = world.handle(body, "worker-2", headers, signed_services(world))
    # Then billing's daily maximum still decides it: refused, and Stripe never charged
    assert result is Result.FAILED
    assert world.publisher.data()["code"] == FailureCode.PRODUCER_LIMIT_EXCEEDED
    assert world.stripe.debit_calls == []


def test_the_verified_producer_is_stored_with_the_claim(world: World) -> None:
    # Given / When billing's signed debit is handled
    body = a_body(request_id="who-1")
    assert world.handle(body, "w", services=signed_services(world)) is Result.SUCCEEDED
    # Then the ledger says who asked
    record = world.ledger.requests.get("who-1")
    assert record is not None
    assert record.producer == PRODUCER.producer


def an_unreachable_ledger(tmp_path: Path) -> Ledger:
    return Ledger.on(make_engine(f"sqlite:///{tmp_path}/missing/dir/ledger.db"))


def test_a_refusal_that_cannot_be_recorded_is_retried_as_such(world: World, tmp_path: Path) -> None:
    # Given the ledger is away / When an unsigned command arrives
    services = signed_services(world, an_unreachable_ledger(tmp_path))
    # Then the refusal is to be retried (nothing recorded), and Stripe was never asked
    with pytest.raises(RefusalNotRecorded, match="unauthorized"):
        world.handle(a_body(), headers={}, services=services)
    assert world.stripe.debit_calls == []
    assert world.stripe.reads == []


@dataclass
class RecordedDeadLetter:
    body: bytes | str
    reason: str
    stage: str
    headers: dict[str, Any] | None


@dataclass
class RecordingDeadLetters:
    sent: list[RecordedDeadLetter] = field(default_factory=list)

    def send(
        self,
        body: bytes | str,
        *,
        reason: str,
        stage: str,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> None:
        self.sent.append(RecordedDeadLetter(body, reason, stage, headers))


@dataclass
class RecordingRuntime(Runtime):
    recorded: RecordingDeadLetters = field(default_factory=RecordingDeadLetters)

    @property
    def dead_letters(self) -> Any:
        return self.recorded


@dataclass(frozen=True)
class LastAttempt:
    number: int = 12
    task_id: str = "req-1:0123456789ab"

    def retry_in(self, countdown: int, error: Exception) -> str:
        raise AssertionError(f"no retry after the last attempt ({countdown}, {error})")


def a_runtime(services: Services) -> RecordingRuntime:
    app = Celery("t", broker="memory://", set_as_current=False)
    settings = load_settings(stripe_api_key="sk_test_x", max_attempts=12)
    return RecordingRuntime(settings, app, factory=lambda _s, _a: services)


def test_a_refusal_that_cannot_be_recorded_goes_back_to_its_queue_never_to_a_dead_letter(
    world: World, tmp_path: Path
) -> None:
    # Given the ledger is away when an unsigned command arrives
    runtime = a_runtime(signed_services(world, an_unreachable_ledger(tmp_path)))
    delivery = world.delivery(a_body(), headers={})
    # When its first attempt runs
    settle = run_first_attempt(runtime.app, runtime, delivery)
    # Then the command is given back to its queue, as it came: no task, no dead letter
    # "attempts exhausted" that a replay could turn into money
    assert settle is Settle.REQUEUE
    assert runtime.recorded.sent == []
    assert world.stripe.debit_calls == []


def test_a_request_out_of_attempts_is_dead_lettered_as_the_ledger_holds_it(
    world: World,
) -> None:
    # Given billing's signed debit, claimed, that Stripe answers with a timeout
    body = a_body()
    services = signed_services(world)
    world.stripe.fail_next(TransientFailure("timeout"), times=2)
    with pytest.raises(TransientFailure):
        world.handle(body, "first", services=services)
    world.clock.advance(200)  # the lease ran out
    runtime = a_runtime(services)
    # When its last attempt fails too
    outcome = run_attempt(
        LastAttempt(), runtime, "req-1", lambda svc, owner: resume("req-1", svc, owner)
    )
    # Then it is escalated, and its dead letter is the command as claimed, naming the
    # request: a replay resumes the claim, under billing's policy stored with it
    assert outcome == "needs_reconciliation"
    [letter] = runtime.recorded.sent
    assert letter.stage == "task"
    assert letter.reason.startswith("attempts exhausted")
    assert DebitRequested.model_validate_json(letter.body) == (
        DebitRequested.model_validate_json(body)
    )
    assert letter.headers == {"x-debit-worker-request-id": "req-1"}
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
    assert record.producer == PRODUCER.producer
