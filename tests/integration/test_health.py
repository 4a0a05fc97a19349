"""`/livez` and `/readyz` of a real `debit-worker run`: ready once it consumes, with the key
accepted and the ledger answering; not ready, naming the ledger, once its database is gone;
live throughout."""

from __future__ import annotations

import json
import signal
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from tests.integration.conftest import POSTGRES, own_database, own_vhost
from tests.integration.worker_process import start_worker, stop, wait
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def probe(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as refused:
        return refused.code, json.loads(refused.read())


def answers(port: int, path: str) -> bool:
    try:
        probe(port, path)
    except OSError:  # not listening yet
        return False
    return True


@pytest.fixture(scope="module")
def health_vhost() -> Iterator[str]:
    yield from own_vhost()


def drop_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')


def test_ready_while_running_not_ready_once_the_ledger_is_gone_and_live_throughout(
    health_vhost: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    database = own_database()
    database_url = next(database)
    log, port = tmp_path / "worker.log", free_port()
    # Given a worker process serving its own endpoint
    worker = start_worker(
        health_vhost,
        database_url,
        sandbox,
        log,
        env={"DEBIT_WORKER_METRICS_PORT": str(port), "DEBIT_WORKER_METRICS_HOST": "127.0.0.1"},
    )
    try:
        wait(lambda: answers(port, "/livez"), log, "the endpoint never answered", 120)
        # When it consumes, Stripe has accepted its key and the ledger answers
        wait(lambda: probe(port, "/readyz")[0] == 200, log, "never ready", 120)
        # Then it is ready, every check saying why, and live
        status, ready = probe(port, "/readyz")
        assert (status, ready["ready"], ready["not_ready"]) == (200, True, [])
        assert set(ready["checks"]) == {"broker", "ledger", "stripe_key"}
        assert "1 of 1 worker processes consuming" in ready["checks"]["broker"]["detail"]
        assert probe(port, "/livez") == (200, {"live": True})

        # When its ledger's database goes away
        drop_database(database_url)
        deadline = time.monotonic() + 30
        while (reply := probe(port, "/readyz"))[0] == 200:
            assert time.monotonic() < deadline, "still ready 30 s after the database went away"
            time.sleep(0.5)
        # Then it is not ready, the body naming the ledger (and nothing that was fine)
        status, not_ready = reply
        assert (status, not_ready["ready"], not_ready["not_ready"]) == (503, False, ["ledger"])
        assert "does not answer SELECT 1" in not_ready["checks"]["ledger"]["detail"]
        # And still live
        assert probe(port, "/livez") == (200, {"live": True})
        assert worker.poll() is None
    finally:
        stop(worker, signal.SIGTERM)
        for _ in database:  # drops the database if it is still there
            pass
