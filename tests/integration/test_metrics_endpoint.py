"""The Prometheus endpoint of a real `debit-worker run --processes 2`: what it counts is what
the producers received.

The supervisor serves the sum of both worker processes' metrics (prometheus-client's
multiprocess mode); each debit's outcome, attempt and Stripe call is counted once, whichever
process handled it, and the ledger's gauges are read at the scrape.
"""

from __future__ import annotations

import signal
import socket
import urllib.request
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.integration.conftest import (
    PlainAmqp,
    kept_dead_letters,
    new_id,
    own_database,
    own_ledger,
    own_vhost,
)
from tests.integration.worker_process import consumers, event_client, start_worker, stop, wait
from worker.adapters.ledger import Ledger
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
NO_CONSENT = "acct_1ExpressCA00000001"  # in the sandbox, without a consent in this ledger
UNKNOWN = "acct_1NoSuchAccount00001"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
FAILED = "io.debit-worker.debit.failed.v1"

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def scrape(port: int) -> Samples:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    """The sum of `name`'s samples carrying at least `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, found), v in samples.items() if n == name and wanted <= found)


@pytest.fixture(scope="module")
def metrics_vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    yield from own_database()


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return own_ledger(database_url)


@pytest.fixture
def client(metrics_vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(metrics_vhost)


def test_the_endpoint_counts_what_the_producers_received_across_two_processes(
    metrics_vhost: str,
    database_url: str,
    ledger: Ledger,
    sandbox: RunningSandbox,
    client: PlainAmqp,
    tmp_path: Path,
) -> None:
    log, port = tmp_path / "worker.log", free_port()
    # Given `run --processes 2` with its endpoint on a port of its own
    worker = start_worker(
        metrics_vhost,
        database_url,
        sandbox,
        log,
        env={"DEBIT_WORKER_METRICS_PORT": str(port), "DEBIT_WORKER_METRICS_HOST": "127.0.0.1"},
        args=("--processes", "2"),
    )
    try:
        wait(lambda: consumers(client) == 2, log, "two processes never both consumed", 120)
        # When debits arrive that succeed, fail with codes, are invalid, or cannot be read
        commands = [command_body(new_id("m-ok"), US, 1000 + n) for n in range(4)]
        commands += [
            command_body(new_id("m-consent"), NO_CONSENT, 700, currency="cad"),
            command_body(new_id("m-unknown"), UNKNOWN, 700),
            {"request_id": new_id("m-invalid"), "account": US, "amount": "lots"},
        ]
        for command in commands:
            client.publish_command(**command)
        client.publish(b"not json at all")
        events = [client.event_for(command["request_id"], timeout=60) for command in commands]
        # (dead-lettered at the intake: no event, only the dead letter)
        assert kept_dead_letters(ledger, b"not json at all")
        samples = scrape(port)
    finally:
        stop(worker, signal.SIGTERM)

    # Then each outcome the producers received is counted once, by outcome and code
    received = Counter(
        ("succeeded", "") if e["type"] == SUCCEEDED else ("failed", e["data"]["code"])
        for e in events
    )
    assert {e["type"] for e in events} == {SUCCEEDED, FAILED}
    assert len({code for outcome, code in received if outcome == "failed"}) >= 2
    counted = {
        (outcome, code): value(samples, "debit_worker_debits_total", outcome=outcome, code=code)
        for outcome, code in received
    }
    assert counted == dict(received), log.read_text()[-3000:]
    assert value(samples, "debit_worker_debits_total") == len(events)
    # And every command's first attempt, none still in flight, the dead letter by its stage
    assert value(samples, "debit_worker_attempts_total", number="1") == len(commands)
    assert value(samples, "debit_worker_debits_in_flight") == 0
    assert value(samples, "debit_worker_dead_letters_total", stage="intake") == 1
    # And Stripe's answers by endpoint and status: a charge per success, the unknown account
    charges = value(
        samples,
        "debit_worker_stripe_request_duration_seconds_count",
        endpoint="POST /v1/charges",
        status="200",
    )
    assert charges == received["succeeded", ""]
    assert (
        value(
            samples,
            "debit_worker_stripe_request_duration_seconds_count",
            endpoint="GET /v1/accounts/{id}",
            status="404",
        )
        == 1
    )
    assert value(samples, "debit_worker_rate_budget_wait_seconds_count", priority="debits") >= (
        charges
    )
    # And both processes report consuming; the ledger's gauges come from the ledger
    consuming = {
        dict(labels)["pid"]: v
        for (name, labels), v in samples.items()
        if name == "debit_worker_intake_consuming"
    }
    assert sorted(consuming.values()) == [1.0, 1.0]
    assert value(samples, "debit_worker_ledger_up") == 1
    assert value(samples, "debit_worker_needs_reconciliation_requests") == 0
    assert ("debit_worker_outbox_lag_seconds", frozenset()) in samples
