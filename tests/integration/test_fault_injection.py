"""The fault-injection harness and the poison run, small enough for CI, and a Stripe call
that hangs longer than the worker's timeout. Real worker processes, real RabbitMQ and
PostgreSQL, the sandbox in its own process. The documented large runs are in
docs/reliability.md.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faults.broker import Broker
from faults.services import WorkerPool, own_database, own_vhost, sandbox_process, worker_env
from worker.sandbox import SandboxAdmin

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, timeout: float) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    report: dict[str, object] = json.loads(done.stdout[done.stdout.index("{") :])
    return report


@pytest.mark.usefixtures("vhost", "database_url")  # fail (CI) or skip without the services
def test_debits_under_kills_restarts_and_stripe_faults_end_exactly_once() -> None:
    # Given 200 debits, three workers, crash points, 429s, 500s, lost responses and latency
    # When the harness kills and restarts workers, RabbitMQ and PostgreSQL while they run
    report = _run(
        "faults.harness",
        "--requests=200",
        "--publish-seconds=15",
        "--crash-share=0.01",
        "--broker-restarts=1",
        "--postgres-restarts=1",
        "--drain-timeout=150",
        timeout=240,
    )
    # Then every invariant holds (the harness exits 1 otherwise), and faults did happen
    assert report["violations"] == []
    faults = report["faults_injected"]
    assert isinstance(faults, dict)
    assert faults.get("broker_restart") == 1
    assert faults.get("postgres_restart") == 1
    assert faults.get("sandbox_drop_after", 0) > 0


@pytest.mark.usefixtures("vhost", "database_url")
def test_malformed_and_adversarial_messages_end_as_debit_failed_or_dead_letters() -> None:
    # Given 300 generated malformed messages (types, sizes, encodings, headers)
    # When they are published to the real broker
    report = _run("faults.poison", "--messages=300", timeout=180)
    # Then each is answered or dead-lettered, no worker crashed, Stripe was never called
    assert report["violations"] == []
    assert report["stripe_calls"] == 0
    assert report["debit_failed"] + report["dead_letters"] == 300  # type: ignore[operator]


@pytest.mark.usefixtures("vhost", "database_url")
def test_a_stripe_call_hanging_past_the_timeout_moves_the_money_once(tmp_path: Path) -> None:
    # Given Stripe takes 2.5 s to answer and the worker gives up on a call after 1 s
    request_id = f"stall-{time.monotonic_ns()}"
    with (
        own_vhost("debit-stall") as vhost,
        own_database("debit_stall") as database_url,
        sandbox_process(tmp_path) as admin,
    ):
        admin.set_faults(latency_ms=2500)
        env = worker_env(
            vhost, database_url, admin.url, stripe_timeout_seconds=1, consent_required="false"
        )
        pool = WorkerPool(env, tmp_path, size=1, concurrency=4)
        pool.start_all()
        broker = Broker(vhost)
        try:
            _wait_for_queue(broker)
            broker.bind_collector("stall.events")
            # When a debit is requested, and Stripe executes the hanging call after all
            body = {
                "request_id": request_id,
                "account": "acct_1ExpressUS00000001",
                "amount": 4242,
                "currency": "usd",
                "reason": "platform_charge",
            }
            broker.publish(json.dumps(body).encode(), content_type="application/json")
            paid = _payments_when(admin, request_id, lambda found: len(found) >= 1)
            admin.set_faults()  # Stripe answers promptly again
            events: list[dict[str, Any]] = []
            deadline = time.monotonic() + 60
            while not events and time.monotonic() < deadline:
                events = [json.loads(m.body) for m in broker.drain("stall.events")]
        finally:
            pool.stop_all()
            broker.close()
        # Then the retries repeated the same key: one payment, announced once
        after = _payments_when(admin, request_id, lambda found: True)
    assert [p["id"] for p in after] == [p["id"] for p in paid]
    assert {e["data"]["payment"] for e in events} == {paid[0]["id"]}


def _wait_for_queue(broker: Broker) -> None:
    deadline = time.monotonic() + 60
    while broker.depth("debits.commands.worker") < 0:
        assert time.monotonic() < deadline, "the worker never declared its queues"
        time.sleep(0.5)


def _payments_when(
    admin: SandboxAdmin, request_id: str, done: Callable[[list[dict[str, Any]]], bool]
) -> list[dict[str, Any]]:
    deadline = time.monotonic() + 60
    while True:
        found = [p for p in admin.state().payments if p["metadata"].get("request_id") == request_id]
        if done(found) or time.monotonic() > deadline:
            return found
        time.sleep(0.2)
