"""A worker process SIGKILLed in the middle of a Stripe call: another live worker process
resumes the debit once the dead one's lease runs out, with the request's own idempotency key,
and Stripe holds one payment.

Real `debit-worker run` processes on the default lease and janitor settings, their own
RabbitMQ virtual host and PostgreSQL database (a killed worker's expired leases would be
taken over by any worker on a shared one), and a sandbox slow enough that the debit is in
flight when the kill comes. How fast the take-over is, is the fault run's figure
(docs/reliability.md); here the order of events is checked, not their timing.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from tests.integration.conftest import (
    PlainAmqp,
    new_id,
    own_database,
    own_ledger,
    own_vhost,
    payments_for,
)
from tests.integration.worker_process import (
    consumers,
    event_client,
    start_worker,
    stop,
    wait,
)
from worker.adapters.ledger import Ledger, Status
from worker.adapters.ledger.records import RequestRecord
from worker.domain.types import idempotency_key
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox, running_sandbox

pytestmark = pytest.mark.integration

ACCOUNT = "acct_1ExpressUS00000001"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
# Every Stripe call takes this long: the kill lands while the charge is in flight.
STRIPE_LATENCY_MS = 4000


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    yield from own_database()


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return own_ledger(database_url)


@pytest.fixture(scope="module")
def crash_vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        server.admin.set_faults(latency_ms=STRIPE_LATENCY_MS)
        yield server


@pytest.fixture
def plain_amqp(crash_vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(crash_vhost)


def _holder(workers: list[subprocess.Popen[bytes]], owner: str) -> subprocess.Popen[bytes] | None:
    """The worker whose process (or process group) the lease owner `host:pid:task` names."""
    pid = int(owner.split(":")[1])
    for worker in workers:
        try:
            if pid == worker.pid or os.getpgid(pid) == worker.pid:
                return worker
        except ProcessLookupError:
            continue
    return None


def _in_flight(ledger: Ledger, request_id: str, log: Path) -> RequestRecord:
    """The request once a worker has begun its Stripe attempt (attempting, leased)."""
    found: list[RequestRecord] = []

    def attempting() -> bool:
        record = ledger.requests.get(request_id)
        if record is not None and record.status is Status.ATTEMPTING and record.lease_owner:
            found.append(record)
        return bool(found)

    wait(attempting, log, "no worker began the Stripe attempt", timeout=90)
    return found[0]


def _event_keys(sandbox: RunningSandbox, request_id: str) -> list[str | None]:
    """The idempotency key of each charge Event Stripe raised for the request."""
    client = stripe.StripeClient(sandbox.api_key, base_addresses={"api": sandbox.url})
    keys: list[str | None] = []
    for event in client.v1.events.list(params={"limit": 100}).auto_paging_iter():
        raw: dict[str, Any] = event.to_dict()
        charge = raw["data"]["object"]
        if charge.get("metadata", {}).get("request_id") == request_id:
            keys.append((raw.get("request") or {}).get("idempotency_key"))
    return keys


def test_a_debit_whose_worker_is_killed_mid_charge_is_resumed_by_another_with_its_own_key(
    crash_vhost: str,
    database_url: str,
    ledger: Ledger,
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "workers.log"
    # Given two worker processes on the default lease and janitor settings, both consuming
    workers = [start_worker(crash_vhost, database_url, slow_sandbox, log) for _ in range(2)]
    try:
        wait(lambda: consumers(plain_amqp) == 2, log, "two workers never both consumed", 90)
        request_id = plain_amqp.publish_command(**command_body(new_id("crash"), ACCOUNT, 123))

        # When the process holding the debit is SIGKILLed while its Stripe call is in flight
        held = _in_flight(ledger, request_id, log)
        assert held.lease_owner is not None
        holder = _holder(workers, held.lease_owner)
        assert holder is not None, f"no worker is {held.lease_owner}"
        stop(holder, signal.SIGKILL)
        survivor = next(w for w in workers if w is not holder)
        left = ledger.requests.get(request_id)
        assert left is not None
        dead_owner, lease_ran_out = left.lease_owner, left.lease_until

        # Then the survivor finishes it: one success event
        outcome = plain_amqp.event_for(request_id, timeout=120)
        assert survivor.poll() is None, log.read_text()[-3000:]
    finally:
        for worker in workers:
            stop(worker, signal.SIGTERM if worker.poll() is None else signal.SIGKILL)

    assert outcome["type"] == SUCCEEDED, log.read_text()[-3000:]
    # And the dead process's lease was not cut short: it still named the dead owner when the
    # kill came, and the survivor's next attempt started only once that lease had run out
    assert dead_owner == held.lease_owner
    assert lease_ran_out is not None
    history = ledger.history("request", request_id)
    resumed = [e for e in history if e.action in {"attempt", "succeeded"} and e.actor != dead_owner]
    assert resumed, [(e.action, e.actor) for e in history]
    assert resumed[0].at >= lease_ran_out
    assert _holder([survivor], resumed[0].actor) is survivor
    # And it repeated the same call: the request's own key, one payment at Stripe, which the
    # ledger and the event name
    record = ledger.requests.get(request_id)
    assert record is not None
    assert record.status is Status.SUCCEEDED
    assert record.idempotency_key == idempotency_key(request_id)
    paid = payments_for(slow_sandbox, request_id)
    assert [p["id"] for p in paid] == [record.payment_id] == [outcome["data"]["payment"]]
    assert _event_keys(slow_sandbox, request_id) == [idempotency_key(request_id)]
    assert slow_sandbox.admin.problems() == []
