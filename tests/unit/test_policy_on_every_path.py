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
from schemas.signing import Signer
from worker.authentication import Authenticator
from worker.bootstrap import Runtime
from worker.errors import RefusalNotRecorded, TransientFailure
from worker.handlers import Result, Services, handle_debit_requested
from worker.ledger import Ledger, Status
from worker.ledger.database import make_engine
from worker.producer_limits import ProducerPolicy
from worker.settings import load_settings
from worker.tasks import process

from .fakes import World, a_body, a_world

BILLING = Signer("billing", "k1", "billing-secret")
DAILY_100_USD = ProducerPolicy(max_per_day={"usd": 10_000})


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


def signed_services(world: World, ledger: Ledger | None = None) -> Services:
    auth = Authenticator(
        keys={BILLING.producer: {BILLING.key_id: BILLING.secret}},
        policies={BILLING.producer: DAILY_100_USD},
    )
    services = dataclasses.replace(world.services(), auth=auth)
    return dataclasses.replace(services, ledger=ledger) if ledger else services


@pytest.mark.parametrize(
    "headers",
    [{}, {"x-debit-producer": "billing", "x-debit-signature": "v1=forged"}],
    ids=["janitor-re-enqueue-without-headers", "copy-with-a-bad-signature"],
)
def test_a_request_resumed_without_its_signature_is_decided_under_its_producers_limit(
    world: World, headers: dict[str, str]
) -> None:
    # Given billing's 200.00 debit (its daily maximum is 100.00), claimed, whose worker died
    # before the rules were asked
    body = a_body(request_id="big-1", amount=20_000)
    world.ledger.requests.claim(
        DebitRequested.model_validate_json(body), "dead-worker", 0.0, producer="billing"
    )
    world.clock.advance(1)  # its lease has run out
    # When it comes back without billing's valid signature
    result = handle_debit_requested(body, signed_services(world), "worker-2", headers)
    # Then billing's daily maximum still decides it: refused, and Stripe never charged
    assert result is Result.FAILED
    assert world.publisher.data()["code"] == FailureCode.PRODUCER_LIMIT_EXCEEDED
    assert world.stripe.debit_calls == []


def test_the_verified_producer_is_stored_with_the_claim(world: World) -> None:
    # Given / When billing's signed debit is handled
    body = a_body(request_id="who-1")
    headers = BILLING.headers_for(body.encode(), int(world.clock().timestamp()))
    assert handle_debit_requested(body, signed_services(world), "w", headers) is Result.SUCCEEDED
    # Then the ledger says who asked
    record = world.ledger.requests.get("who-1")
    assert record is not None
    assert record.producer == "billing"


def an_unreachable_ledger(tmp_path: Path) -> Ledger:
    return Ledger.on(make_engine(f"sqlite:///{tmp_path}/missing/dir/ledger.db"))


def test_a_refusal_that_cannot_be_recorded_is_retried_as_such(world: World, tmp_path: Path) -> None:
    # Given the ledger is away / When an unsigned command arrives
    services = signed_services(world, an_unreachable_ledger(tmp_path))
    # Then the refusal is to be retried (nothing recorded), and Stripe was never asked
    with pytest.raises(RefusalNotRecorded, match="unauthorized"):
        handle_debit_requested(a_body(), services, "worker-1", {})
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


def test_a_refusal_never_recorded_is_dead_lettered_as_unauthorized_with_its_headers(
    world: World, tmp_path: Path
) -> None:
    # Given an unsigned command whose refusal could not be recorded on any attempt
    runtime = a_runtime(signed_services(world, an_unreachable_ledger(tmp_path)))
    headers = {"x-debit-worker-received-at": "1700000000.000"}
    # When its last attempt fails the same way
    outcome = process(LastAttempt(), a_body(), runtime, headers)
    # Then it is dead-lettered as unauthorized (never "attempts exhausted"), headers kept
    assert outcome == "dead_lettered"
    [letter] = runtime.recorded.sent
    assert letter.stage == "auth"
    assert letter.reason.startswith("unauthorized")
    assert "exhausted" not in letter.reason
    assert letter.headers == headers


def test_a_request_out_of_attempts_is_dead_lettered_with_the_headers_it_came_with(
    world: World,
) -> None:
    # Given billing's signed debit that Stripe keeps answering with a timeout
    world.stripe.fail_next(TransientFailure("timeout"), times=1)
    runtime = a_runtime(signed_services(world))
    body = a_body()
    headers = BILLING.headers_for(body.encode(), int(world.clock().timestamp()))
    # When its last attempt fails too
    outcome = process(LastAttempt(), body, runtime, headers)
    # Then it is escalated, and the dead letter keeps billing's signature for a replay
    assert outcome == "needs_reconciliation"
    [letter] = runtime.recorded.sent
    assert letter.reason.startswith("attempts exhausted")
    assert letter.headers == headers
    record = world.ledger.requests.get("req-1")
    assert record is not None
    assert record.status is Status.NEEDS_RECONCILIATION
