"""The worker on the real broker, the real ledger database and the sandbox.

Commands are published and events read with a plain AMQP client, as a producer written in
any language would.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import PlainAmqp, kept_dead_letters, new_id, payments_for
from worker.adapters.ledger import Ledger, Status
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox
from worker.transport.topology import TASK_EXCHANGE, TASK_QUEUE, TASK_ROUTING_KEY

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"


def test_a_valid_command_moves_the_money_once_and_emits_debit_succeeded(
    broker: PlainAmqp, sandbox: RunningSandbox, ledger: Ledger
) -> None:
    # Given an eligible account with consent and enough balance
    request_id = new_id("ok")
    # When a producer publishes a command
    broker.publish_command(**command_body(request_id, US, 1234, description="integration fee"))
    # Then a DebitSucceeded names the one payment Stripe created
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    payments = payments_for(sandbox, request_id)
    assert [p["id"] for p in payments] == [event["data"]["payment"]]
    assert payments[0]["amount"] == 1234
    record = ledger.requests.get(request_id)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert sandbox.admin.problems() == []


@pytest.mark.parametrize(
    ("command", "code"),
    [
        (command_body("x", US, "12"), "invalid_request"),
        (command_body("x", "acct_1DoesNotExist0000001", 100), "account_not_found"),
        (command_body("x", "acct_1StandardUS0000001", 100), "account_ineligible"),
        (command_body("x", "acct_1CustomLegacy000001", 100), "consent_missing"),
        (command_body("x", "acct_1ExpressJP00000001", 1500, "jpy"), "region_unsupported"),
        (command_body("x", US, 100, "eur"), "currency_mismatch"),
        (command_body("x", US, 10_000_001), "amount_exceeds_limit"),
        (command_body("x", "acct_1LowBalanceUS00001", 100_000), "insufficient_balance"),
        (
            command_body("x", US, 100, reason="refund_recovery", refund="re_1DoesNotExist000001"),
            "refund_not_found",
        ),
        (
            command_body("x", US, 100, reason="refund_recovery", refund="re_1RefundEUR0000000001"),
            "refund_currency_mismatch",
        ),
        (
            command_body(
                "x", US, 999_999, reason="refund_recovery", refund="re_1RefundUSD0000000001"
            ),
            "refund_recovery_exceeds_refund",
        ),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_each_refusal_is_a_debit_failed_with_its_code_and_moves_no_money(
    broker: PlainAmqp, sandbox: RunningSandbox, command: dict[str, Any], code: str
) -> None:
    # Given a command that breaks one rule
    request_id = new_id(code)
    command = {**command, "request_id": request_id}
    # When it is published
    broker.publish_command(**command)
    # Then it fails with that rule's code, and Stripe holds no payment for it
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.failed.v1"
    assert event["data"]["code"] == code, event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_a_duplicate_command_gives_one_payment_and_the_same_event_again(
    broker: PlainAmqp, sandbox: RunningSandbox
) -> None:
    # Given a command that already succeeded
    request_id = new_id("dup")
    command = command_body(request_id, US, 500)
    broker.publish_command(**command)
    first = broker.event_for(request_id)
    # When the producer sends it again
    broker.publish_command(**command)
    # Then the same event (same id) arrives again and Stripe still holds one payment
    events = broker.events_for(request_id, 2)
    assert events[1]["id"] == first["id"]
    assert events[1]["data"]["payment"] == first["data"]["payment"]
    assert len(payments_for(sandbox, request_id)) == 1


def test_same_request_id_with_other_content_is_an_idempotency_conflict(
    broker: PlainAmqp, sandbox: RunningSandbox
) -> None:
    # Given a request that succeeded
    request_id = new_id("conflict")
    broker.publish_command(**command_body(request_id, US, 700))
    original = broker.event_for(request_id)
    # When another command reuses its request_id for another amount
    broker.publish_command(**command_body(request_id, US, 701))
    # Then it is refused as a conflict, with its own event id, and no second payment exists
    # (the success may be published once more beside it: its row is marked sent in a batch
    # up to 0.1 s later, and events are at-least-once)
    events = broker.events_until(
        request_id,
        lambda mine: any(e["id"] != original["id"] for e in mine),
        "an event other than the success",
    )
    [conflict] = [e for e in events if e["id"] != original["id"]]
    assert conflict["data"]["code"] == "idempotency_conflict"
    assert conflict["id"] != original["id"]
    assert [p["amount"] for p in payments_for(sandbox, request_id)] == [700]


@pytest.mark.parametrize(
    "body",
    [b"not json", b"\xff\xfe", b"[1, 2]", b'{"amount": 5}', b'{"request_id": "has spaces"}'],
    ids=["text", "bad-utf8", "array", "no-request-id", "bad-request-id"],
)
def test_a_message_nobody_can_answer_is_dead_lettered_and_kept(
    broker: PlainAmqp, ledger: Ledger, body: bytes
) -> None:
    # Given a message with no usable request_id
    # When it is published to the command exchange
    broker.publish(body, content_type="application/octet-stream")
    # Then it is dead-lettered with the reason in its headers, and kept in the ledger
    dead = kept_dead_letters(ledger, body)
    assert len(dead) == 1
    assert dead[0].body == body
    headers = dead[0].headers or {}
    assert headers["x-debit-worker-stage"] == "intake"
    assert headers["x-debit-worker-reason"]


def test_a_refund_is_never_recovered_twice(broker: PlainAmqp, sandbox: RunningSandbox) -> None:
    # Given a 50.00 USD refund of which 30.00 is recovered
    first, second = new_id("rr"), new_id("rr")
    refund = "re_1RefundUSD0000000001"
    broker.publish_command(**command_body(first, US, 3000, reason="refund_recovery", refund=refund))
    first_event = broker.event_for(first)
    # When another 30.00 is asked for
    broker.publish_command(
        **command_body(second, US, 3000, reason="refund_recovery", refund=refund)
    )
    second_event = broker.event_for(second)
    # Then exactly one of them moved money (the session may have recovered from it before)
    codes = {first_event["data"].get("code"), second_event["data"].get("code")}
    assert "refund_recovery_exceeds_refund" in codes
    recovered = sum(
        p["amount"] for p in sandbox.admin.state().payments if p["metadata"].get("refund") == refund
    )
    assert recovered <= 5000


def test_a_first_attempt_needs_no_task_queue_so_a_command_is_done_while_it_is_unbound(
    broker: PlainAmqp, ledger: Ledger
) -> None:
    # Given the task queue unbound from its exchange (an operator's slip, say); only later
    # attempts go through it (the second binding is Celery's, for its delayed delivery)
    keys = (TASK_ROUTING_KEY, f"#.{TASK_ROUTING_KEY}")
    channel = broker.connection.channel()
    for key in keys:
        channel.queue_unbind(TASK_QUEUE, TASK_EXCHANGE, routing_key=key)
    try:
        # When a command arrives
        request_id = new_id("unbound")
        broker.publish_command(**command_body(request_id, US, 222))
        # Then its first attempt, run straight from the intake, does the debit exactly once
        event = broker.event_for(request_id, timeout=60)
    finally:
        for key in keys:
            channel.queue_bind(TASK_QUEUE, TASK_EXCHANGE, routing_key=key)
        channel.close()
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    assert len({e["id"] for e in broker.received if e["subject"] == request_id}) == 1
    record = ledger.requests.get(request_id)
    assert record is not None
    assert record.status is Status.SUCCEEDED
