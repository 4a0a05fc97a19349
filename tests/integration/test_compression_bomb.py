"""A compression bomb through the real broker: a real `debit-worker run` process dead-letters
it as it arrived, never inflating it, and keeps answering other commands.

kombu inflates any message with a `compression` header while converting it, before the
intake sees it: five commands of about 300 KB each once took a worker from 130 MB to 678 MB,
and one naming a compression kombu does not know stopped the worker ("Unrecoverable error"),
again at each redelivery.
"""

from __future__ import annotations

import signal
import subprocess
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import amqp
import pytest

from tests.integration.conftest import (
    DEFAULT_KEY,
    PlainAmqp,
    new_id,
    own_database,
    own_ledger,
    own_vhost,
    sign,
)
from tests.integration.worker_process import (
    event_client,
    start_worker,
    stop,
    wait_until_consuming,
)
from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.dead_letters import DeadLetter, DeadLetterStore
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox, running_sandbox
from worker.transport.plain_consumer import COMPRESSION_HEADER, ORIGINAL_COMPRESSION_HEADER

pytestmark = pytest.mark.integration

ACCOUNT = "acct_1ExpressUS00000001"
SUCCEEDED = "io.debit-worker.debit.succeeded.v1"
GZIP = "application/x-gzip"  # kombu.compression's name (zlib)
UNKNOWN = "application/x-snappy"  # not registered in kombu.compression
BOMBS = 5
INFLATED_MB = 300
PEAK_LIMIT_KB = 200 * 1024


def zlib_bomb(megabytes: int) -> bytes:
    """`megabytes` MiB of zeros, zlib-compressed in pieces (never held whole): ~300 KB."""
    packer = zlib.compressobj(9)
    zeros = bytes(1 << 20)
    return b"".join([*(packer.compress(zeros) for _ in range(megabytes)), packer.flush()])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return zlib_bomb(INFLATED_MB)


@pytest.fixture(scope="module")
def bomb_vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    yield from own_database()


@pytest.fixture(scope="module")
def ledger(database_url: str) -> Ledger:
    return own_ledger(database_url)


@pytest.fixture(scope="module")
def stripe() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        yield server


@pytest.fixture
def client(bomb_vhost: str) -> Iterator[PlainAmqp]:
    yield from event_client(bomb_vhost)


@pytest.fixture
def worker(
    bomb_vhost: str,
    database_url: str,
    ledger: Ledger,  # the worker needs the ledger's schema and the consents
    stripe: RunningSandbox,
    client: PlainAmqp,
    tmp_path: Path,
) -> Iterator[subprocess.Popen[bytes]]:
    """One `debit-worker run` process, once it consumes commands."""
    log = tmp_path / "worker.log"
    process = start_worker(bomb_vhost, database_url, stripe, log)
    try:
        wait_until_consuming(client, process, log)
        yield process
    finally:
        stop(process, signal.SIGTERM, timeout=60)


def _peak_kb(pid: int) -> int:
    """The process's peak resident memory so far (VmHWM), in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmHWM for process {pid}")


def _dead_letters(ledger: Ledger, count: int, timeout: float = 60.0) -> list[DeadLetter]:
    """As the worker's dead-letter keeper moved them into the ledger: bytes never inflated."""
    store = DeadLetterStore(ledger.engine, utc_now)
    deadline = time.monotonic() + timeout
    while True:
        found = store.listed(state=None, limit=count + 100)
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


@pytest.mark.timeout(180)
def test_compression_bombs_are_dead_lettered_unopened_and_the_worker_keeps_answering(
    worker: subprocess.Popen[bytes], client: PlainAmqp, bomb: bytes, ledger: Ledger
) -> None:
    # Given bombs of about 300 KB on the wire, each 300 MB inflated, signed like any command
    assert len(bomb) < 400_000
    headers = {**sign(bomb, DEFAULT_KEY), COMPRESSION_HEADER: GZIP, "x-trace": "bomb"}
    # (and one naming a compression kombu does not know: it used to stop the worker)
    unknown = {**sign(b"snappy?", DEFAULT_KEY), COMPRESSION_HEADER: UNKNOWN}
    # When they are published with kombu's compression header, then a plain command
    for _ in range(BOMBS):
        client.publish(bomb, headers=headers)
    client.publish(b"snappy?", headers=unknown)
    request_id = new_id("after-bombs")
    client.publish_command(**command_body(request_id, ACCOUNT, 1234))
    # Then the plain command is answered
    assert client.event_for(request_id, timeout=60)["type"] == SUCCEEDED
    dead = _dead_letters(ledger, BOMBS + 1)
    # And the worker is still running, its memory never near one inflated bomb
    assert worker.poll() is None
    peak = _peak_kb(worker.pid)
    assert peak < PEAK_LIMIT_KB, f"peak resident memory {peak // 1024} MB"
    # And every bomb is a dead letter exactly as it was sent, with the reason
    assert len(dead) == BOMBS + 1
    [odd] = [m for m in dead if m.body == b"snappy?"]
    assert (odd.headers or {})["x-debit-worker-reason"] == (
        f"compressed commands are refused (compression: {UNKNOWN}); publish plain JSON"
    )
    for message in (m for m in dead if m is not odd):
        assert message.body == bomb
        found = message.headers or {}
        assert found["x-debit-worker-reason"] == (
            f"compressed commands are refused (compression: {GZIP}); publish plain JSON"
        )
        assert found["x-debit-worker-stage"] == "intake"
        # under a name no kombu client inflates; the producer's own headers kept
        assert COMPRESSION_HEADER not in found
        assert found[ORIGINAL_COMPRESSION_HEADER] == GZIP
        assert found["x-trace"] == "bomb"
        assert found["x-debit-producer"] == DEFAULT_KEY.producer


@pytest.mark.timeout(180)
def test_bombs_on_celerys_own_queues_are_dropped_unopened(
    worker: subprocess.Popen[bytes], client: PlainAmqp, bomb: bytes, tmp_path: Path
) -> None:
    # Given bombs on the worker's task queue and on its remote-control broadcast, which
    # Celery's own consumers read (possible only with the worker's or Flower's credentials)
    log = tmp_path / "worker.log"

    def publish(exchange: str, routing_key: str) -> None:
        headers = {COMPRESSION_HEADER: GZIP}
        message = amqp.Message(bomb, content_type="application/json", application_headers=headers)
        client.channel.basic_publish(message, exchange=exchange, routing_key=routing_key)

    # When they are published
    publish("debits.tasks", "debit.process")
    # (the broadcast reaches a remote-control queue only once the worker has bound it, a
    # moment after it consumes commands: publish it until one has been received)
    deadline = time.monotonic() + 30
    while _refusals(log) < 2 and time.monotonic() < deadline:
        publish("celery.pidbox", "")
        time.sleep(1)
    # Then Celery logs each as undecodable (its bytes left compressed) and drops it
    _wait_for_lines(log, "CompressionRefused", count=2)
    # And the worker is still running, its memory never near one inflated bomb
    assert worker.poll() is None
    peak = _peak_kb(worker.pid)
    assert peak < PEAK_LIMIT_KB, f"peak resident memory {peak // 1024} MB"
    # And it keeps answering commands
    request_id = new_id("after-task-bombs")
    client.publish_command(**command_body(request_id, ACCOUNT, 1235))
    assert client.event_for(request_id, timeout=60)["type"] == SUCCEEDED


def _refusals(log: Path) -> int:
    lines = log.read_text(errors="replace").splitlines()
    return len([line for line in lines if "CRITICAL" in line and "CompressionRefused" in line])


def _wait_for_lines(log: Path, text: str, count: int, timeout: float = 60.0) -> None:
    """Until `count` CRITICAL log lines name `text`."""
    deadline = time.monotonic() + timeout
    while True:
        lines = log.read_text(errors="replace").splitlines()
        if len([line for line in lines if "CRITICAL" in line and text in line]) >= count:
            return
        assert time.monotonic() < deadline, f"no {count} x {text}:\n{lines[-40:]}"
        time.sleep(0.2)
