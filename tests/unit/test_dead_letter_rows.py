"""What the dead-letter keeper reads from a dead-lettered message: its time, request,
producer, stage and reason, whatever shape it came in (the worker's own, a Celery task,
RabbitMQ's x-death), and a message it cannot read kept whole."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from worker.adapters.ledger.dead_letters import NewDeadLetter
from worker.ops.dead_letter_messages import (
    dead_letter_row,
    dedupe_key,
    json_safe,
    original_message,
    resumed_request,
)
from worker.transport.attempts import PROCESS_TASK

NOW = datetime(2026, 12, 10, 12, 0, tzinfo=UTC)
OWN_ID = "0123456789abcdef0123456789abcdef"
SIGNED = {
    "x-debit-producer": "billing",
    "x-debit-key-id": "k1",
    "x-debit-timestamp": "1765368000",
    "x-debit-signature": "v1=abc",
}
COMMAND = {"request_id": "req-1", "account": "acct_1", "amount": 100, "currency": "usd"}


def no_producer(_request_id: str) -> str | None:
    return None


def row(
    body: bytes,
    headers: dict[str, Any] | None,
    *,
    producer_of: Callable[[str], str | None] = no_producer,
    routing_key: str = "debit.requested",
    content_type: str | None = "application/json",
) -> NewDeadLetter:
    return dead_letter_row(
        body,
        headers,
        routing_key=routing_key,
        content_type=content_type,
        producer_of=producer_of,
        now=NOW,
    )


def test_a_dead_letter_of_the_intake_keeps_the_workers_id_time_stage_reason_and_signer() -> None:
    # Given a message the intake could not read, dead-lettered by the worker with its headers
    headers = {
        **SIGNED,
        "x-debit-worker-reason": "body is not JSON (Expecting value)",
        "x-debit-worker-stage": "intake",
        "x-debit-worker-dead-letter-id": OWN_ID,
        "x-debit-worker-dead-lettered-at": "1765368000.250",
    }
    # When the keeper reads it
    kept = row(b"not json", headers)
    # Then its row names the worker's id, the stamped time, the stage, the reason, the signer
    assert kept.dedupe_key == OWN_ID
    assert kept.dead_lettered_at == datetime(2025, 12, 10, 12, 0, 0, 250000, tzinfo=UTC)
    assert (kept.stage, kept.reason) == ("intake", "body is not JSON (Expecting value)")
    assert (kept.request_id, kept.producer) == (None, "billing")
    assert kept.body == b"not json"
    assert kept.headers == headers


def test_a_dead_letter_of_an_escalated_task_names_its_request_and_the_ledgers_producer() -> None:
    # Given an escalated request's command, dead-lettered by the worker at the task stage
    headers = {
        "x-debit-worker-reason": "attempts exhausted: TransientFailure: Stripe 500",
        "x-debit-worker-stage": "task",
        "x-debit-worker-request-id": "req-1",
        "x-debit-worker-dead-letter-id": OWN_ID,
        "x-debit-worker-dead-lettered-at": "1765368000",
    }
    # When the keeper reads it, the ledger knowing the request's producer
    kept = row(json.dumps(COMMAND).encode(), headers, producer_of={"req-1": "refunds"}.get)
    # Then the request is the one named, and the producer the ledger's
    assert (kept.request_id, kept.producer, kept.stage) == ("req-1", "refunds", "task")


def test_a_later_attempt_rabbitmq_dead_lettered_is_read_from_its_task_and_x_death() -> None:
    # Given a `process_debit` task naming a request, dead-lettered by RabbitMQ's delivery
    # limit (py-amqp gives x-death times naive, in UTC)
    died = datetime(2026, 12, 9, 8, 30)  # naive, as py-amqp decodes it
    headers = {
        "task": PROCESS_TASK,
        "id": "req-2:abc",
        "x-death": [{"reason": "delivery_limit", "queue": "debits.tasks", "time": died}],
        "x-first-death-reason": "delivery_limit",
    }
    body = json.dumps([["req-2"], {}, {"callbacks": None}]).encode()
    # When the keeper reads it
    kept = row(body, headers, producer_of={"req-2": "billing"}.get, routing_key="debit.process")
    # Then RabbitMQ's own reason, queue and time are kept, at stage broker
    assert kept.request_id == "req-2"
    assert kept.producer == "billing"
    assert kept.stage == "broker"
    assert kept.reason == "dead-lettered by RabbitMQ (delivery_limit) from debits.tasks"
    assert kept.dead_lettered_at == died.replace(tzinfo=UTC)
    assert kept.routing_key == "debit.process"
    assert kept.headers["x-death"][0]["time"] == "2026-12-09T08:30:00"
    assert len(kept.dedupe_key) == 64  # a hash: RabbitMQ gives it no id of the worker's


def test_a_task_of_the_version_before_is_unwrapped_to_its_command_and_signature() -> None:
    # Given a task message that carried the command and its headers as its arguments
    command = json.dumps(COMMAND)
    body = json.dumps([[command, SIGNED], {}, {"callbacks": None}]).encode()
    headers = {"task": PROCESS_TASK, "x-death": [{"reason": "rejected", "queue": "debits.tasks"}]}
    # When it is read
    kept = row(body, headers)
    # Then the request and producer are the wrapped command's
    assert (kept.request_id, kept.producer) == ("req-1", "billing")
    assert original_message(body, headers) == (command.encode(), SIGNED)
    assert resumed_request(body, headers) is None


def test_a_bare_command_rejected_by_rabbitmq_names_its_request_and_signer() -> None:
    # Given a command the intake could not dead-letter itself, rejected to the DLX
    headers = {**SIGNED, "x-death": [{"reason": "rejected", "queue": "debits.commands.worker"}]}
    # When it is read
    kept = row(json.dumps(COMMAND).encode(), headers)
    # Then
    assert (kept.request_id, kept.producer) == ("req-1", "billing")
    assert kept.reason == "dead-lettered by RabbitMQ (rejected) from debits.commands.worker"
    assert kept.dead_lettered_at == NOW  # no time anywhere: when it was kept


def test_a_message_without_any_reason_says_so() -> None:
    # Given bytes someone published straight to the dead-letter exchange, no headers
    kept = row(b"\xff\xfe", None, content_type=None)
    # Then it is kept at stage broker with a reason that says none was given
    assert (kept.stage, kept.request_id, kept.producer) == ("broker", None, None)
    assert kept.reason.startswith("no reason given")
    assert kept.headers == {}
    assert kept.content_type is None


def test_a_message_the_keeper_cannot_parse_is_kept_whole_as_unparsed() -> None:
    # Given a body nested too deep for any JSON parser, claiming a stage
    body = b"[" * 200_000
    headers = {"x-debit-worker-stage": "intake", "task": PROCESS_TASK}
    # When it is read
    kept = row(body, headers)
    # Then it is still kept, body and headers, at stage broker, its reason saying why
    assert kept.body == body
    assert kept.headers == headers
    assert kept.stage == "broker"
    assert kept.reason.startswith("kept unparsed: its headers or body could not be read")
    assert kept.dead_lettered_at == NOW


def test_what_a_producer_controls_is_bounded_and_made_storable() -> None:
    # Given a forged stage, an overlong request id, a NUL and a lone surrogate in headers
    headers = {
        "x-debit-worker-stage": "anything",
        "x-debit-worker-request-id": "r" * 129,
        "x-debit-producer": "bill\x00ing",
        "x-debit-worker-reason": "bad \udc80 byte\x00",
        "x-debit-worker-dead-lettered-at": "nan",
    }
    kept = row(b"{}", headers)
    # Then nothing unstorable or misleading is kept
    assert kept.stage == "broker"
    assert kept.request_id is None  # cut short it would name another request
    assert kept.producer is None
    assert kept.reason == "bad \\udc80 byte\ufffd"
    assert kept.dead_lettered_at == NOW
    json.dumps(kept.headers).encode()  # storable as UTF-8 JSON


def test_headers_are_made_json_safe_keeping_their_shape() -> None:
    moment = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    given = {"a": [1, 2.5, True, None], "b": {"t": moment}, "d": Decimal("1.5"), "n": float("inf")}
    assert json_safe(given) == {
        "a": [1, 2.5, True, None],
        "b": {"t": "2026-01-02T03:04:05+00:00"},
        "d": "1.5",
        "n": "inf",
    }


def test_a_redelivery_of_a_rabbitmq_dead_letter_has_the_same_dedupe_key() -> None:
    # Given a dead letter without the worker's id, as first taken and as redelivered
    headers: dict[str, Any] = {"x-death": [{"reason": "rejected", "count": 1}]}
    redelivered = {**headers, "x-delivery-count": 3}
    # Then both have the same key, and another body another key
    assert dedupe_key(b"x", headers) == dedupe_key(b"x", redelivered)
    assert dedupe_key(b"y", headers) != dedupe_key(b"x", headers)
    # And an id header that is not the worker's (not 32 hex digits) is not trusted as one
    forged = {"x-debit-worker-dead-letter-id": "short"}
    assert dedupe_key(b"x", forged) != "short"
