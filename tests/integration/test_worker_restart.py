"""A worker stopped in the middle of a batch loses nothing: another worker finishes it."""

from __future__ import annotations

import time

import pytest
from celery.contrib.testing.worker import start_worker

from tests.integration.conftest import PlainAmqp, new_id
from worker.app import build_worker
from worker.ledger import Ledger, Status
from worker.sandbox import RunningSandbox
from worker.settings import Settings

pytestmark = pytest.mark.integration


def test_commands_in_flight_when_a_worker_stops_are_finished_by_the_next_worker(
    broker: PlainAmqp, sandbox: RunningSandbox, settings: Settings, ledger: Ledger
) -> None:
    # Given a slow Stripe and a second worker that is stopped mid-batch
    sandbox.admin.set_faults(latency_ms=400)
    try:
        app, _ = build_worker(settings)
        ids = [new_id("restart") for _ in range(12)]
        with start_worker(
            app, pool="threads", concurrency=4, perform_ping_check=False, hostname="restart@test"
        ):
            for request_id in ids:
                broker.publish_command(
                    request_id=request_id,
                    account="acct_1ExpressUS00000001",
                    amount=101,
                    currency="usd",
                    reason="platform_charge",
                )
            time.sleep(0.5)
        # When the stopped worker is gone (the session's worker keeps running)
        # Then every request gets exactly one outcome and Stripe holds exactly one payment each
        for request_id in ids:
            event = broker.event_for(request_id, timeout=60)
            assert event["type"] == "io.debit-worker.debit.succeeded.v1"
        payments = [
            p for p in sandbox.admin.state().payments if p["metadata"].get("request_id") in ids
        ]
        assert sorted(p["metadata"]["request_id"] for p in payments) == sorted(ids)
        assert all(
            (record := ledger.requests.get(i)) is not None and record.status is Status.SUCCEEDED
            for i in ids
        )
    finally:
        sandbox.admin.set_faults(latency_ms=0)
