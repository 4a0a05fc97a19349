"""Operators read and replay the dead-letter queue with the CLI."""

from __future__ import annotations

import json

import amqp
import pytest
from click.testing import CliRunner

from tests.integration.conftest import DEFAULT_KEY, PlainAmqp, new_id
from worker.cli import main
from worker.demo import command_body
from worker.settings import Settings
from worker.tasks import PROCESS_TASK

pytestmark = pytest.mark.integration


def _dead_letter(client: PlainAmqp, body: bytes, headers: dict[str, object]) -> None:
    client.channel.basic_publish(
        amqp.Message(body, application_headers=headers, delivery_mode=2),
        exchange="debits.dlx",
        routing_key="debit.requested",
    )


def test_a_task_message_dead_lettered_by_rabbitmq_is_replayed_as_its_command(
    broker: PlainAmqp, settings: Settings
) -> None:
    # Given the task message of a valid command, dead-lettered by the broker's delivery limit
    request_id = new_id("dlq")
    command = json.dumps(command_body(request_id, "acct_1ExpressUS00000001", 321))
    task_body = json.dumps([[command], {}, {"callbacks": None}]).encode()
    _dead_letter(broker, task_body, {"task": PROCESS_TASK, "id": f"{request_id}:x"})
    env = {
        "DEBIT_WORKER_BROKER_URL": settings.broker_url,
        # the operator replays as a known producer: old signatures are past their age
        "DEBIT_WORKER_PRODUCER_ID": DEFAULT_KEY.producer,
        "DEBIT_WORKER_PRODUCER_KEY_ID": DEFAULT_KEY.key_id,
        "DEBIT_WORKER_PRODUCER_SECRET": DEFAULT_KEY.secret,
    }
    runner = CliRunner()
    # When an operator lists the queue, then replays it
    listed = runner.invoke(main, ["dlq", "list"], env=env)
    replayed = runner.invoke(main, ["dlq", "replay", "--limit", "5"], env=env)
    # Then the listing shows it, and the replayed command is processed like any other
    assert "1 message(s) shown" in listed.output, listed.output
    assert "replayed 1 message(s)" in replayed.output, replayed.output
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    assert event["data"]["amount"] == 321
