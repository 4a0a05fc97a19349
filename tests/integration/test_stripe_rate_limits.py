"""A real `debit-worker run` against a sandbox that limits each endpoint as Stripe does.

With the worker's budget set to the sandbox's limits, a burst of debits meets no 429 at all.
With the worker's charges limit set above the sandbox's (an operator who entered a raise
Stripe never granted), the sandbox's 429s name the endpoint's limit, the budget backs the
charges off, and every debit still succeeds exactly once.
"""

from __future__ import annotations

import json
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.conftest import (
    PlainAmqp,
    new_id,
    own_database,
    own_ledger,
    own_vhost,
)
from tests.integration.worker_process import event_client, start_worker, stop, wait_until_consuming
from worker.ops.demo import command_body
from worker.sandbox import Faults, RunningSandbox, running_sandbox

pytestmark = pytest.mark.integration

SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
DEBITS = 20
ACCOUNT = "acct_1ExpressUS00000001"
# Stripe's shape at a low rate: a global limit of 50/s and POST /v1/charges held to 5/s.
LIMITED = Faults(rate_limit_rps=50, endpoint_rate_limits={"POST /v1/charges": 5})
QUICK = {
    "DEBIT_WORKER_RETRY_BASE_SECONDS": "1",
    "DEBIT_WORKER_RETRY_MAX_SECONDS": "3",
    "DEBIT_WORKER_RELAY_INTERVAL_SECONDS": "1",
    "DEBIT_WORKER_STRIPE_RATE_LIMIT": "50",
}


@pytest.fixture(scope="module")
def vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    for url in own_database():
        own_ledger(url).engine.dispose()  # the integration accounts' consents
        yield url


@pytest.fixture
def sandbox() -> Iterator[RunningSandbox]:
    """A sandbox of this test's own, limited like Stripe; its own key (so its own schedules
    in the shared Redis budget)."""
    with running_sandbox(api_key=f"sk_test_limits{uuid.uuid4().hex[:12]}", faults=LIMITED) as box:
        yield box


@pytest.fixture
def events(vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(vhost)


def _burst_of_debits(
    vhost: str,
    database_url: str,
    sandbox: RunningSandbox,
    events: PlainAmqp,
    log: Path,
    charges_limit: float,
) -> list[str]:
    """Start a worker whose charges' budget is `charges_limit`, publish DEBITS debits at
    once, and return their request ids once every one has its event (all succeeded)."""
    env = {
        **QUICK,
        "DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS": json.dumps({"charges": charges_limit}),
        "DEBIT_WORKER_RATE_BUDGET_REDIS_URL": "redis://127.0.0.1:6379/0",
    }
    worker = start_worker(vhost, database_url, sandbox, log, env=env)
    try:
        wait_until_consuming(events, worker, log)
        ids = [new_id("limits") for _ in range(DEBITS)]
        for request_id in ids:
            events.publish_command(**command_body(request_id, ACCOUNT, 100))
        outcomes = {request_id: events.event_for(request_id, timeout=90) for request_id in ids}
    finally:
        stop(worker, signal.SIGTERM)
    assert {event["type"] for event in outcomes.values()} == {SUCCEEDED}, log.read_text()[-3000:]
    payments = [p["metadata"].get("request_id") for p in sandbox.admin.state().payments]
    assert sorted(payments) == sorted(ids)  # each debit exactly once
    return ids


def test_a_worker_budgeted_at_stripes_limits_meets_no_429(
    vhost: str,
    database_url: str,
    sandbox: RunningSandbox,
    events: PlainAmqp,
    tmp_path: Path,
) -> None:
    # Given a sandbox holding POST /v1/charges to 5/s (global 50/s), and a worker whose
    # budget knows the same limits
    log = tmp_path / "worker.log"

    # When a burst of debits is requested at once
    _burst_of_debits(vhost, database_url, sandbox, events, log, charges_limit=5)

    # Then every one succeeded once (above), and the sandbox refused not one request
    injected = sandbox.admin.state().faults_injected
    assert injected.get("rate_limit_endpoint", 0) == 0, log.read_text()[-3000:]
    assert injected.get("rate_limit_bucket", 0) == 0


def test_a_worker_budgeted_above_the_endpoints_limit_backs_off_what_the_429s_name(
    vhost: str,
    database_url: str,
    sandbox: RunningSandbox,
    events: PlainAmqp,
    tmp_path: Path,
) -> None:
    # Given the same sandbox, and a worker told the charges may go at 50/s
    log = tmp_path / "worker.log"

    # When a burst of debits is requested at once
    _burst_of_debits(vhost, database_url, sandbox, events, log, charges_limit=50)

    # Then every one succeeded once (above); the sandbox refused some debits for the
    # endpoint's limit, never for the global one, and the worker heard the reason
    injected = sandbox.admin.state().faults_injected
    refused = injected.get("rate_limit_endpoint", 0)
    assert refused > 0
    assert injected.get("rate_limit_bucket", 0) == 0
    assert "Stripe rate limit (rate_limit, endpoint-rate)" in log.read_text()
    # And the budget backed the charges off instead of retrying into the limit: fewer 429s
    # than debits
    assert refused < DEBITS, log.read_text()[-3000:]
