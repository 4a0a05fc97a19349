"""The fault-injection harness and the poison run, small enough for CI, and a Stripe call
that hangs longer than the worker's timeout. Real worker processes, real RabbitMQ and
PostgreSQL, the sandbox in its own process. The documented large runs are in
docs/reliability.md.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from faults.broker import Broker
from faults.services import (
    HARNESS_SIGNER,
    WorkerPool,
    own_database,
    own_vhost,
    sandbox_process,
    worker_env,
)
from worker.sandbox import SandboxAdmin

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[2]


def _run(module: str, *args: str, timeout: float) -> dict[str, object]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.send_signal(signal.SIGTERM)  # it cleans up its workers, vhost and database
        out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, out[-4000:] + err[-4000:]
    report: dict[str, object] = json.loads(out[out.index("{") :])
    return report


@pytest.mark.timeout(540)
@pytest.mark.usefixtures("vhost", "database_url")  # fail (CI) or skip without the services
def test_debits_under_kills_restarts_and_stripe_faults_end_exactly_once() -> None:
    # Given 150 debits, three workers, crash points, 429s, 500s, lost responses and latency
    # When the harness kills and restarts workers and PostgreSQL while they run (RabbitMQ
    # restarts are left to the documented large run: on the shared RabbitMQ 3.10 a restart
    # once left another session's vhost deletion hanging)
    report = _run(
        "faults.harness",
        "--requests=150",
        "--publish-seconds=10",
        "--crash-share=0.01",
        "--broker-restarts=0",
        "--postgres-restarts=1",
        "--drain-timeout=150",
        "--reconcile-timeout=200",
        timeout=480,
    )
    # Then every invariant holds (the harness exits 1 otherwise: among them, no request is
    # left in needs_reconciliation, each settlement is the sandbox's truth, and every debit a
    # SIGKILLed worker held was resumed by another), faults did happen, the day's proof found
    # nothing unexplained, and the recovery figures are reported against the 15 s bound
    assert report["violations"] == []
    recovery = report["recovery"]
    assert isinstance(recovery, dict)
    assert recovery["bound_seconds"] == 15
    assert isinstance(recovery["bound_met"], bool)
    reconciliation = report["reconciliation"]
    assert isinstance(reconciliation, dict)
    assert reconciliation["left_open_after_rounds"] == {}
    proofs = report["daily_proof"]
    assert isinstance(proofs, list)
    assert proofs
    faults = report["faults_injected"]
    assert isinstance(faults, dict)
    assert faults.get("postgres_restart") == 1
    assert faults.get("sandbox_drop_after", 0) > 0


@pytest.mark.timeout(240)
@pytest.mark.usefixtures("vhost", "database_url")
def test_malformed_and_adversarial_messages_end_as_debit_failed_or_dead_letters() -> None:
    # Given 300 generated malformed messages (types, sizes, encodings, headers)
    # When they are published to the real broker
    report = _run("faults.poison", "--messages=300", timeout=170)
    # Then each is answered or dead-lettered, no worker crashed, Stripe was never called
    assert report["violations"] == []
    assert report["stripe_calls"] == 0
    assert report["debit_failed"] + report["dead_letters"] == 300  # type: ignore[operator]


@pytest.mark.usefixtures("vhost", "database_url")
def test_a_stripe_call_hanging_past_the_timeout_moves_the_money_once(tmp_path: Path) -> None:
    # Given a worker that gives up on a Stripe call after 1 s (account facts already cached)
    request_id = f"stall-{time.monotonic_ns()}"
    with (
        own_vhost("debit-stall") as vhost,
        own_database("debit_stall") as database_url,
        sandbox_process(tmp_path) as admin,
    ):
        env = worker_env(
            vhost, database_url, admin.url, stripe_timeout_seconds=1, consent_required="false"
        )
        pool = WorkerPool(env, tmp_path, size=1, concurrency=4)
        pool.start_all()
        broker = Broker(vhost)
        try:
            _wait_for_queue(broker)
            broker.bind_collector("stall.events")
            _publish(broker, f"warm-{request_id}")
            assert _events(broker, 1)
            # When Stripe then takes 2.5 s to answer the debit, and executes it after all
            admin.set_faults(latency_ms=2500)
            _publish(broker, request_id)
            paid = _payments_when(admin, request_id, lambda found: len(found) >= 1)
            admin.set_faults()  # Stripe answers promptly again
            events = [e for e in _events(broker, 1) if e["subject"] == request_id]
        finally:
            pool.stop_all()
            broker.close()
        # Then the repeats used the same key: one payment, and the event names it
        after = _payments_when(admin, request_id, lambda found: True)
    assert len(paid) == 1
    assert [p["id"] for p in after] == [paid[0]["id"]]
    assert {e["data"]["payment"] for e in events} == {paid[0]["id"]}


def _publish(broker: Broker, request_id: str) -> None:
    body = {
        "request_id": request_id,
        "account": "acct_1ExpressUS00000001",
        "amount": 4242,
        "currency": "usd",
        "reason": "platform_charge",
    }
    raw = json.dumps(body).encode()
    broker.publish(
        raw, content_type="application/json", application_headers=HARNESS_SIGNER.headers_for(raw)
    )


def _events(broker: Broker, at_least: int) -> list[dict[str, Any]]:
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + 60
    while len(got) < at_least and time.monotonic() < deadline:
        got += [json.loads(m.body) for m in broker.drain("stall.events", idle_seconds=0.5)]
    return got


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
