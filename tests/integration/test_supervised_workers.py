"""`debit-worker run --processes 2` on a real broker: two worker processes consume, one
killed mid-batch is replaced and nothing is lost or doubled, and SIGTERM stops them all.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import amqp
import pytest

from tests.integration.conftest import PlainAmqp, new_id, own_database, own_ledger, own_vhost
from tests.integration.test_worker_process_restart import ACCOUNT, _start_worker, event_client
from worker.demo import command_body
from worker.ledger import Ledger, Status
from worker.sandbox import RunningSandbox, running_sandbox

pytestmark = pytest.mark.integration

SUCCEEDED = "io.debit-worker.debit.succeeded.v1"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """Its own database (see own_database): this module kills workers holding leases."""
    yield from own_database()


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return own_ledger(database_url)


@pytest.fixture(scope="module")
def supervised_vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        server.admin.set_faults(latency_ms=200)
        yield server


@pytest.fixture
def plain_amqp(supervised_vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(supervised_vhost)


def _consumers(client: PlainAmqp) -> int:
    channel = client.connection.channel()
    try:
        declared: Any = channel.queue_declare("debits.commands.worker", passive=True)
        return int(declared[2])
    except amqp.exceptions.NotFound:
        return 0
    finally:
        if channel.is_open:
            channel.close()


def _wait(condition: Any, log: Path, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def test_supervised_processes_share_the_work_survive_a_kill_and_stop_on_sigterm(
    supervised_vhost: str,
    database_url: str,
    ledger: Ledger,
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "supervised.log"
    # Given `run --processes 2`
    supervisor = _start_worker(
        supervised_vhost, database_url, slow_sandbox, log, extra_args=("--processes", "2")
    )
    try:
        _wait(lambda: _consumers(plain_amqp) == 2, log, "two processes never both consumed")
        first_children = _children(supervisor.pid)
        assert len(first_children) == 2
        # When a batch is in flight and one worker process is SIGKILLed
        ids = [new_id("supervised") for _ in range(20)]
        for request_id in ids:
            plain_amqp.publish_command(**command_body(request_id, ACCOUNT, 107))
        plain_amqp.event_for(ids[0], timeout=60)
        os.kill(first_children[0], signal.SIGKILL)
        # Then it is replaced, and every request succeeds exactly once
        _wait(
            lambda: (
                len(_children(supervisor.pid)) == 2
                and first_children[0] not in _children(supervisor.pid)
            ),
            log,
            "the killed process was not replaced",
        )
        outcomes = {rid: plain_amqp.event_for(rid, timeout=90) for rid in ids}
        assert {e["type"] for e in outcomes.values()} == {SUCCEEDED}, log.read_text()[-3000:]
        _wait(lambda: _consumers(plain_amqp) == 2, log, "the replacement never consumed")
        # And SIGTERM to the supervisor stops every process, cleanly
        children = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, log.read_text()[-3000:]
        for child in children:
            assert not Path(f"/proc/{child}").exists() or _is_zombie(child)
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
    for request_id in ids:
        ids_seen = {e["id"] for e in plain_amqp.received if e["subject"] == request_id}
        assert len(ids_seen) == 1
        record = ledger.requests.get(request_id)
        assert record is not None
        assert record.status is Status.SUCCEEDED
    payments = [
        p for p in slow_sandbox.admin.state().payments if p["metadata"]["request_id"] in ids
    ]
    missing = sorted(set(ids) - {p["metadata"]["request_id"] for p in payments})
    assert not missing, [
        (rid, (ledger.requests.get(rid) or None), slow_sandbox.admin.state().payments[-3:])
        for rid in missing
    ]
    assert sorted(p["metadata"]["request_id"] for p in payments) == sorted(ids)
    assert slow_sandbox.admin.problems() == []
    assert "worker process 1" in log.read_text()


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True
