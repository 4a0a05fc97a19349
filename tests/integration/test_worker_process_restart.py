"""A worker process killed in the middle of a batch loses nothing and doubles nothing.

Real `debit-worker run` processes on their own RabbitMQ virtual host: the first is
SIGKILLed while debits are in flight; a second one finishes every request exactly once. One
stopped with SIGTERM acks the commands it finished before it exits.
And `run --processes 2`: both processes consume, one killed mid-batch is replaced, and
SIGTERM stops them all.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.integration.conftest import PlainAmqp, new_id, own_database, own_ledger, own_vhost
from tests.integration.worker_process import (
    consumers,
    event_client,
    start_worker,
    stop,
    wait,
    wait_until_consuming,
)
from worker.adapters.ledger import Ledger, Status
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox, running_sandbox

pytestmark = pytest.mark.integration

ACCOUNT = "acct_1ExpressUS00000001"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
# Short leases and retries, so a killed worker's requests are taken over within the test.
QUICK = {
    "DEBIT_WORKER_CLAIM_LEASE_SECONDS": "5",
    "DEBIT_WORKER_RETRY_BASE_SECONDS": "1",
    "DEBIT_WORKER_RETRY_MAX_SECONDS": "3",
    "DEBIT_WORKER_RELAY_INTERVAL_SECONDS": "1",
}


def _start_worker(
    vhost: str,
    database_url: str,
    sandbox: RunningSandbox,
    log: Path,
    extra_args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    return start_worker(vhost, database_url, sandbox, log, env=QUICK, args=extra_args)


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    """Its own database (see own_database): this module kills workers holding leases."""
    yield from own_database()


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return own_ledger(database_url)


@pytest.fixture(scope="module")
def restart_vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def slow_sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        server.admin.set_faults(latency_ms=300)
        yield server


@pytest.fixture
def plain_amqp(restart_vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(restart_vhost)


def test_a_worker_killed_mid_batch_leaves_every_request_done_exactly_once(
    restart_vhost: str,
    database_url: str,
    ledger: Ledger,
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "workers.log"
    # Given a worker process busy with a batch of slow debits
    first = _start_worker(restart_vhost, database_url, slow_sandbox, log)
    try:
        wait_until_consuming(plain_amqp, first, log)
        ids = [new_id("kill") for _ in range(16)]
        for request_id in ids:
            plain_amqp.publish_command(**command_body(request_id, ACCOUNT, 111))
        plain_amqp.event_for(ids[0], timeout=60)
        # When it is SIGKILLed with debits in flight, and a new worker starts
        stop(first, signal.SIGKILL)
        second = _start_worker(restart_vhost, database_url, slow_sandbox, log)
        try:
            outcomes = {rid: plain_amqp.event_for(rid, timeout=90) for rid in ids}
        finally:
            stop(second, signal.SIGTERM)
    finally:
        stop(first, signal.SIGKILL)
    # Then every request succeeded once: one event id, one payment, a succeeded ledger row
    assert {e["type"] for e in outcomes.values()} == {SUCCEEDED}, log.read_text()[-3000:]
    _assert_done_exactly_once(ids, plain_amqp, ledger, slow_sandbox)


def test_a_worker_stopped_mid_batch_acks_the_commands_it_finished_before_it_exits(
    restart_vhost: str,
    database_url: str,
    ledger: Ledger,
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    first_log, second_log = tmp_path / "first.log", tmp_path / "second.log"
    # Given a worker process (4 threads) busy with a batch of slow debits
    first = _start_worker(restart_vhost, database_url, slow_sandbox, first_log)
    try:
        wait_until_consuming(plain_amqp, first, first_log)
        ids = [new_id("sigterm") for _ in range(16)]
        for request_id in ids:
            plain_amqp.publish_command(**command_body(request_id, ACCOUNT, 113))
        plain_amqp.event_for(ids[0], timeout=60)
        # When it is stopped with SIGTERM while first attempts are running
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=60) == 0, first_log.read_text()[-3000:]
    finally:
        stop(first, signal.SIGKILL)
    # Then the commands it had not started go back to the queue and a new worker does them
    second = _start_worker(restart_vhost, database_url, slow_sandbox, second_log)
    try:
        outcomes = {rid: plain_amqp.event_for(rid, timeout=90) for rid in ids}
    finally:
        stop(second, signal.SIGTERM)
    assert {e["type"] for e in outcomes.values()} == {SUCCEEDED}, second_log.read_text()[-3000:]
    _assert_done_exactly_once(ids, plain_amqp, ledger, slow_sandbox)
    # And none that the first worker finished is delivered again: it acked each one before
    # its channel closed
    assert "first attempts to end" in first_log.read_text()
    assert "re-emitting its event" not in second_log.read_text()


def _assert_done_exactly_once(
    ids: list[str], plain_amqp: PlainAmqp, ledger: Ledger, sandbox: RunningSandbox
) -> None:
    """One event id, a succeeded ledger row and one payment per request; the books balance."""
    for request_id in ids:
        ids_seen = {e["id"] for e in plain_amqp.received if e["subject"] == request_id}
        assert len(ids_seen) == 1
        record = ledger.requests.get(request_id)
        assert record is not None
        assert record.status is Status.SUCCEEDED
    payments = [p for p in sandbox.admin.state().payments if p["metadata"]["request_id"] in ids]
    assert sorted(p["metadata"]["request_id"] for p in payments) == sorted(ids)
    assert sandbox.admin.problems() == []


def _children(pid: int) -> list[int]:
    text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    return [int(child) for child in text.split()]


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _gone(pid: int) -> bool:
    return not Path(f"/proc/{pid}").exists() or _is_zombie(pid)


@contextmanager
def _two_supervised(
    vhost: str, database_url: str, sandbox: RunningSandbox, client: PlainAmqp, log: Path
) -> Iterator[tuple[subprocess.Popen[bytes], list[int]]]:
    """`run --processes 2` once both of its processes consume: the supervisor and their
    pids. A supervisor still running at the end is killed with its process group."""
    supervisor = _start_worker(vhost, database_url, sandbox, log, extra_args=("--processes", "2"))
    try:
        wait(lambda: consumers(client) == 2, log, "two processes never both consumed")
        children = _children(supervisor.pid)
        assert len(children) == 2
        yield supervisor, children
    finally:
        if supervisor.poll() is None:
            os.killpg(supervisor.pid, signal.SIGKILL)
            supervisor.wait()


def test_supervised_processes_share_the_work_survive_a_kill_and_stop_on_sigterm(
    restart_vhost: str,
    database_url: str,
    ledger: Ledger,
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "supervised.log"
    # Given `run --processes 2`
    with _two_supervised(restart_vhost, database_url, slow_sandbox, plain_amqp, log) as (
        supervisor,
        first_children,
    ):
        # When a batch is in flight and one worker process is SIGKILLed
        ids = [new_id("supervised") for _ in range(20)]
        for request_id in ids:
            plain_amqp.publish_command(**command_body(request_id, ACCOUNT, 107))
        plain_amqp.event_for(ids[0], timeout=60)
        os.kill(first_children[0], signal.SIGKILL)
        # Then it is replaced, and every request succeeds exactly once
        wait(
            lambda: (
                len(_children(supervisor.pid)) == 2
                and first_children[0] not in _children(supervisor.pid)
            ),
            log,
            "the killed process was not replaced",
        )
        outcomes = {rid: plain_amqp.event_for(rid, timeout=90) for rid in ids}
        assert {e["type"] for e in outcomes.values()} == {SUCCEEDED}, log.read_text()[-3000:]
        wait(lambda: consumers(plain_amqp) == 2, log, "the replacement never consumed")
        # And SIGTERM to the supervisor stops every process, cleanly
        children = _children(supervisor.pid)
        supervisor.send_signal(signal.SIGTERM)
        assert supervisor.wait(timeout=60) == 0, log.read_text()[-3000:]
        for child in children:
            assert _gone(child)
    _assert_done_exactly_once(ids, plain_amqp, ledger, slow_sandbox)
    assert "worker process 1" in log.read_text()


def test_worker_processes_stop_when_their_supervisor_is_killed(
    restart_vhost: str,
    database_url: str,
    ledger: Ledger,  # the workers need the ledger's schema
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "orphans.log"
    # Given `run --processes 2`, both processes consuming
    with _two_supervised(restart_vhost, database_url, slow_sandbox, plain_amqp, log) as (
        supervisor,
        children,
    ):
        try:
            # When the supervisor alone is SIGKILLed (not its process group: each worker
            # process has a group of its own)
            os.kill(supervisor.pid, signal.SIGKILL)
            supervisor.wait()
            # Then its worker processes stop by themselves instead of running on unsupervised
            wait(
                lambda: all(_gone(child) for child in children),
                log,
                "worker processes outlived their supervisor",
                timeout=60,
            )
            wait(lambda: consumers(plain_amqp) == 0, log, "commands still being consumed")
        finally:
            for child in children:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child, signal.SIGKILL)


PLATFORM_READ = "GET /v1/account"
CHARGE = "POST /v1/charges"


def test_a_starting_worker_reads_the_platform_before_any_command(
    restart_vhost: str,
    database_url: str,
    ledger: Ledger,  # the worker needs the ledger's schema
    slow_sandbox: RunningSandbox,
    plain_amqp: PlainAmqp,
    tmp_path: Path,
) -> None:
    log = tmp_path / "worker.log"
    # Given the sandbox's counts of platform reads and charges so far
    before = dict(slow_sandbox.admin.state().requests)

    def platform_reads() -> int:
        return slow_sandbox.admin.state().requests.get(PLATFORM_READ, 0)

    # When a worker process starts, and no command is published
    worker = _start_worker(restart_vhost, database_url, slow_sandbox, log)
    try:
        wait_until_consuming(plain_amqp, worker, log)
        # The sandbox counts the read when it arrives; the worker logs it when the answer
        # (300 ms later here) comes back: wait for both before stopping it.
        wait(
            lambda: (
                platform_reads() > before.get(PLATFORM_READ, 0)
                and "Stripe platform acct_" in log.read_text()
            ),
            log,
            "no platform read",
        )
    finally:
        stop(worker, signal.SIGTERM)

    # Then it read the platform's account once, said so in its log, and sent no charge
    after = slow_sandbox.admin.state().requests
    assert after.get(PLATFORM_READ, 0) == before.get(PLATFORM_READ, 0) + 1
    assert after.get(CHARGE, 0) == before.get(CHARGE, 0)
    assert "Stripe platform acct_" in log.read_text(), log.read_text()[-3000:]
