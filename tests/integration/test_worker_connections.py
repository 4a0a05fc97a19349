"""A real `debit-worker run` opens the Stripe connections its HTTP pool keeps as it starts:
their count is set from the start, not by each new peak of concurrent calls."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from bench.procfs import connections
from tests.integration.conftest import own_vhost
from tests.integration.worker_process import start_worker, stop, wait
from worker.bootstrap import BACKGROUND_THREADS
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def connections_vhost() -> Iterator[str]:
    yield from own_vhost()


def test_a_started_worker_holds_a_stripe_connection_for_each_thread_that_may_call_stripe(
    connections_vhost: str, database_url: str, sandbox: RunningSandbox, tmp_path: Path
) -> None:
    # Given a worker process with 4 worker threads, and no debit sent to it
    log = tmp_path / "worker.log"
    port = urlsplit(sandbox.url).port
    assert port is not None
    worker = start_worker(
        connections_vhost, database_url, sandbox, log, env={"DEBIT_WORKER_CONCURRENCY": "4"}
    )
    expected = 4 + BACKGROUND_THREADS

    def to_stripe() -> int:
        return connections([worker.pid], {port: "stripe"})["stripe"]

    try:
        # When it has started
        wait(lambda: f"{expected} Stripe connections open" in log.read_text(), log, "no pool", 120)
        # Then it holds one connection to Stripe for each of its threads that may call Stripe
        assert to_stripe() == expected
    finally:
        stop(worker, signal.SIGTERM)
