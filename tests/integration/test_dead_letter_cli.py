"""Operators read and replay the dead-letter queue with the CLI. A replay is judged by the
command's own producer signature and policy, never by the operator's key."""

from __future__ import annotations

import json
import time
from typing import Any

import amqp
import pytest
from click.testing import CliRunner

from schemas.commands import DebitRequested
from tests.integration.conftest import (
    DEFAULT_KEY,
    OPERATOR_KEY,
    PRODUCER_KEYS,
    Key,
    PlainAmqp,
    new_id,
    payments_for,
    sign,
)
from worker.adapters.ledger import Ledger
from worker.ops.cli import main
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox
from worker.settings import Settings
from worker.transport.attempts import PROCESS_TASK

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
RECEIVED_AT = "x-debit-worker-received-at"


def _dead_letter(client: PlainAmqp, body: bytes, headers: dict[str, object]) -> None:
    client.channel.basic_publish(
        amqp.Message(body, application_headers=headers, delivery_mode=2),
        exchange="debits.dlx",
        routing_key="debit.requested",
    )


def _replay(settings: Settings, key: Key = OPERATOR_KEY) -> Any:
    env = {
        "DEBIT_WORKER_BROKER_URL": settings.broker_url,
        "DEBIT_WORKER_PRODUCER_ID": key.producer,
        "DEBIT_WORKER_PRODUCER_KEY_ID": key.key_id,
        "DEBIT_WORKER_PRODUCER_SECRET": key.secret,
    }
    return CliRunner().invoke(main, ["dlq", "replay", "--limit", "5"], env=env)


def test_a_task_message_dead_lettered_by_rabbitmq_is_replayed_under_its_producers_signature(
    broker: PlainAmqp, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given the task message of a command signed and received an hour ago (far past the
    # signature window), dead-lettered by the broker's delivery limit with its headers
    request_id = new_id("dlq")
    command = json.dumps(command_body(request_id, US, 321))
    an_hour_ago = int(time.time()) - 3600
    headers = sign(command.encode(), DEFAULT_KEY, an_hour_ago) | {
        RECEIVED_AT: f"{an_hour_ago + 1}.250"
    }
    task_body = json.dumps([[command, headers], {}, {"callbacks": None}]).encode()
    _dead_letter(broker, task_body, {"task": PROCESS_TASK, "id": f"{request_id}:x"})
    env = {"DEBIT_WORKER_BROKER_URL": settings.broker_url}
    # When an operator lists the queue, then replays it
    listed = CliRunner().invoke(main, ["dlq", "list"], env=env)
    replayed = _replay(settings)
    # Then the listing shows it, and the replayed command is processed like any other
    assert "1 message(s) shown" in listed.output, listed.output
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    assert event["data"]["amount"] == 321
    assert len(payments_for(sandbox, request_id)) == 1


def test_a_later_attempt_dead_lettered_by_rabbitmq_is_replayed_by_its_request_id(
    broker: PlainAmqp, ledger: Ledger, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a claimed request whose later attempt (a task naming the request only) was
    # dead-lettered by the broker's delivery limit
    request_id = new_id("dlq-task")
    body = json.dumps(command_body(request_id, US, 432)).encode()
    command = DebitRequested.model_validate_json(body)
    ledger.requests.claim(command, "dead-worker", 0.0, producer=DEFAULT_KEY.producer)
    task_body = json.dumps([[request_id], {}, {"callbacks": None}]).encode()
    _dead_letter(broker, task_body, {"task": PROCESS_TASK, "id": f"{request_id}:x"})
    # When an operator replays it
    replayed = _replay(settings)
    # Then the request is resumed from the ledger and its debit made once
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    assert len(payments_for(sandbox, request_id)) == 1


def test_an_unsigned_command_dead_lettered_as_exhausted_cannot_be_laundered_by_a_replay(
    broker: PlainAmqp, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given an unsigned command in the dead-letter queue, as a refusal that could not be
    # recorded once landed there
    request_id = new_id("launder")
    command = json.dumps(command_body(request_id, US, 777)).encode()
    _dead_letter(broker, command, {"x-debit-worker-reason": "attempts exhausted: …"})
    # When an operator replays it with the operators' key
    replayed = _replay(settings)
    # Then the worker refuses it as unauthorized, and no money moves
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "unauthorized"
    assert "never signed" in event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_a_replay_vouched_for_by_a_producer_without_may_replay_is_refused(
    broker: PlainAmqp, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a validly signed command from an hour ago in the dead-letter queue
    request_id = new_id("noreplay")
    command = json.dumps(command_body(request_id, US, 555)).encode()
    an_hour_ago = int(time.time()) - 3600
    _dead_letter(
        broker, command, sign(command, DEFAULT_KEY, an_hour_ago) | {RECEIVED_AT: an_hour_ago}
    )
    # When someone replays it with a producer key that may not vouch for replays
    nobody = Key("noreplay", "n1", PRODUCER_KEYS["noreplay"]["n1"])
    replayed = _replay(settings, nobody)
    # Then the worker refuses it, and no money moves
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "unauthorized"
    assert "may not replay" in event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_replay_without_an_operator_key_says_what_to_set_and_leaves_the_queue_alone(
    settings: Settings,
) -> None:
    # Given no operator key is configured / When an operator replays
    result = CliRunner().invoke(
        main, ["dlq", "replay"], env={"DEBIT_WORKER_BROKER_URL": settings.broker_url}
    )
    # Then one sentence says which settings to set, and it exits non-zero
    assert result.exit_code != 0
    assert "DEBIT_WORKER_PRODUCER_ID" in result.output
    assert "may_replay" in result.output
    assert "Traceback" not in result.output


def test_an_unsigned_copy_of_a_claimed_command_is_decided_under_the_claiming_producers_limit(
    broker: PlainAmqp, ledger: Ledger, sandbox: RunningSandbox
) -> None:
    # Given a 200.00 debit claimed under producer `flood` (daily maximum 100.00), whose
    # worker died before the rules were asked
    request_id = new_id("resumed")
    body = json.dumps(command_body(request_id, US, 20_000)).encode()
    command = DebitRequested.model_validate_json(body)
    ledger.requests.claim(command, "dead-worker", 0.0, producer="flood")
    # When an unsigned copy of it arrives (as a janitor re-enqueue or a late copy would)
    broker.publish(body, headers={})
    # Then it is decided under flood's policy: refused, and no money moves
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "producer_limit_exceeded"
    assert payments_for(sandbox, request_id) == []
