"""Transient Stripe failures are retried later (Celery's delayed delivery on quorum queues)
with the same idempotency key, and end in exactly one payment."""

from __future__ import annotations

import pytest

from tests.integration.conftest import PlainAmqp, new_id
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration


def test_a_debit_rate_limited_by_stripe_is_retried_later_and_succeeds_once(
    broker: PlainAmqp, sandbox: RunningSandbox
) -> None:
    # Given Stripe answers the next debit with 429 rate_limit
    sandbox.admin.set_faults(script=("rate_limit",), writes_only=True)
    try:
        request_id = new_id("retry")
        # When the debit is requested
        broker.publish_command(**command_body(request_id, "acct_1ExpressUS00000001", 4321))
        # Then a later attempt succeeds, and Stripe holds exactly one payment
        event = broker.event_for(request_id, timeout=60)
    finally:
        sandbox.admin.set_faults()
    assert event["type"] == "io.debit-worker.debit.succeeded.v1"
    payments = [
        p for p in sandbox.admin.state().payments if p["metadata"].get("request_id") == request_id
    ]
    assert len(payments) == 1
