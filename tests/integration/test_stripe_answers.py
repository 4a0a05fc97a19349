"""What Stripe answers decides the outcome, not merely that it answered 200: a charge that is
pending, failed or not the debit asked for is never a success, and a refund that moved no
money, or refunded another account's sale, is never recovered.

The real worker on the real broker and PostgreSQL, with the sandbox answering.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from tests.integration.conftest import PlainAmqp, new_id, payments_for
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.tables import audit_log
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"


@pytest.fixture
def answers(sandbox: RunningSandbox) -> Iterator[RunningSandbox]:
    """The sandbox, with its faults back to none after the test."""
    yield sandbox
    sandbox.admin.set_faults()


def _settled(ledger: Ledger, request_id: str, timeout: float = 30.0) -> Status:
    """The request's status once it has left `received`/`attempting`."""
    deadline = time.monotonic() + timeout
    while True:
        record = ledger.requests.get(request_id)
        if record is not None and record.status not in (Status.RECEIVED, Status.ATTEMPTING):
            return record.status
        if time.monotonic() > deadline:
            raise AssertionError(f"request {request_id} still unsettled after {timeout} s")
        time.sleep(0.05)


def _escalation_reason(ledger: Ledger, request_id: str) -> str:
    with ledger.engine.connect() as conn:
        details = conn.execute(
            select(audit_log.c.detail).where(
                audit_log.c.entity == "request",
                audit_log.c.entity_id == request_id,
                audit_log.c.action == str(Status.NEEDS_RECONCILIATION),
            )
        ).scalars()
        return " | ".join(str(detail["why"]) for detail in details)


@pytest.mark.parametrize(
    ("answer", "said"),
    [
        ("pending", "with status 'pending'"),
        ("failed", "status 'failed', not 'succeeded'"),
        ("other_amount", "amount 1235 (asked 1234)"),
        ("other_source", "source 'acct_1NotTheSource000001'"),
    ],
)
def test_a_charge_that_is_not_a_succeeded_debit_as_asked_is_escalated_with_no_event(
    broker: PlainAmqp, answers: RunningSandbox, ledger: Ledger, answer: str, said: str
) -> None:
    # Given Stripe will answer the next debit it accepts with such a charge
    answers.admin.set_faults(charge_answers=(answer,))
    request_id = new_id(f"answer-{answer}")

    # When a producer asks for a debit
    broker.publish_command(**command_body(request_id, US, 1234))

    # Then the request is handed to an operator, naming the charge and what was wrong
    assert _settled(ledger, request_id) is Status.NEEDS_RECONCILIATION
    [payment] = payments_for(answers, request_id)
    reason = _escalation_reason(ledger, request_id)
    assert payment["id"] in reason
    assert said in reason
    # And no event was recorded for it, so no DebitSucceeded (nor DebitFailed) can go out
    assert ledger.outbox.for_request(request_id) == []
    assert answers.admin.state().faults_injected.get(f"charge_{answer}") == 1


@pytest.mark.parametrize(
    ("refund", "code"),
    [
        ("re_1RefundFailed0000001", "refund_not_recoverable"),
        ("re_1RefundCanceled00001", "refund_not_recoverable"),
        ("re_1RefundAction0000001", "refund_requires_action"),
        ("re_1RefundOtherAcct0001", "refund_account_mismatch"),
    ],
    ids=["failed", "canceled", "requires-action", "charge-paid-another-account"],
)
def test_a_refund_that_moved_no_money_or_paid_another_account_is_not_recovered(
    broker: PlainAmqp, sandbox: RunningSandbox, refund: str, code: str
) -> None:
    # Given a refund that failed, was canceled, awaits action, or refunded another account's sale
    request_id = new_id(code)

    # When a recovery of it from the Express account is published
    broker.publish_command(
        **command_body(request_id, US, 1000, reason="refund_recovery", refund=refund)
    )

    # Then it fails with the refund's code, and Stripe was never asked to move money
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.failed.v1"
    assert event["data"]["code"] == code, event["data"]["message"]
    assert refund in event["data"]["message"]
    assert payments_for(sandbox, request_id) == []


def test_a_pending_refund_of_a_sale_paid_to_the_account_is_recovered(
    broker: PlainAmqp, sandbox: RunningSandbox
) -> None:
    # Given a pending refund of a sale whose transfer went to the Express account
    request_id = new_id("rr-pending")

    # When a recovery of part of it is published
    broker.publish_command(
        **command_body(
            request_id, US, 1000, reason="refund_recovery", refund="re_1RefundPending000001"
        )
    )

    # Then the money is recovered
    event = broker.event_for(request_id)
    assert event["type"] == "io.debit-worker.debit.succeeded.v1", event["data"]
    [payment] = payments_for(sandbox, request_id)
    assert payment["id"] == event["data"]["payment"]
