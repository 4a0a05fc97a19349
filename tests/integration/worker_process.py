"""Real `debit-worker run` processes for the tests that start, kill and measure them: a
producer's plain client on their virtual host, starting one, waiting until it consumes,
stopping it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import amqp

from tests.integration.conftest import PRODUCER_KEYS, PRODUCERS, RABBIT, PlainAmqp, connect
from worker.sandbox import RunningSandbox


def event_client(vhost: str) -> Iterator[PlainAmqp]:
    """A producer's plain client that also listens to every event (the worker declares the
    rest of the topology itself)."""
    connection = connect(vhost)
    channel = connection.channel()
    channel.confirm_select()
    # The topology is the worker's to declare; a producer only needs the exchange to exist.
    channel.exchange_declare("debits.commands", "topic", durable=True, auto_delete=False)
    channel.exchange_declare(
        "debits.events",
        "topic",
        durable=True,
        auto_delete=False,
        arguments={"alternate-exchange": "debits.events.unrouted"},
    )
    queue = f"test-events-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, exclusive=True, auto_delete=True)
    channel.queue_bind(queue, "debits.events", routing_key="debit.*")
    yield PlainAmqp(connection, channel, queue)
    connection.close()


def start_worker(
    vhost: str,
    database_url: str,
    sandbox: RunningSandbox,
    log: Path,
    *,
    env: Mapping[str, str] | None = None,
    args: tuple[str, ...] = (),
) -> subprocess.Popen[bytes]:
    """`debit-worker run` on `vhost`, logging to `log`; `env` adds or overrides settings."""
    settings = {
        **os.environ,
        "DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{vhost}",
        "DEBIT_WORKER_DATABASE_URL": database_url,
        "DEBIT_WORKER_STRIPE_API_KEY": sandbox.api_key,
        "DEBIT_WORKER_STRIPE_API_BASE": sandbox.url,
        "DEBIT_WORKER_CONCURRENCY": "4",
        # each process opens its kept ledger connections at start, and tests run several
        "DEBIT_WORKER_DATABASE_POOL_SIZE": "2",
        # no probe server unless a test asks for one: tests run several workers at once
        "DEBIT_WORKER_METRICS_PORT": "0",
        # the tests' plain clients sign with the integration producers' keys
        "DEBIT_WORKER_PRODUCER_KEYS": json.dumps(PRODUCER_KEYS),
        "DEBIT_WORKER_PRODUCERS": json.dumps(PRODUCERS),
        **(env or {}),
    }
    cli = Path(sys.executable).with_name("debit-worker")
    with log.open("ab") as out:
        return subprocess.Popen(
            [str(cli), "run", "--no-migrate", "--loglevel", "INFO", *args],
            env=settings,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def consumers(client: PlainAmqp) -> int:
    """Consumers of the command queue (the worker declares it when its intake starts)."""
    channel = client.connection.channel()
    try:
        declared: Any = channel.queue_declare("debits.commands.worker", passive=True)
        return int(declared[2])
    except amqp.exceptions.NotFound:
        return 0
    finally:
        if channel.is_open:
            channel.close()


def wait(condition: Callable[[], bool], log: Path, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"{what}:\n{log.read_text()[-3000:]}"
        time.sleep(0.2)


def wait_until_consuming(client: PlainAmqp, process: subprocess.Popen[bytes], log: Path) -> None:
    def consuming() -> bool:
        assert process.poll() is None, log.read_text()[-3000:]
        return consumers(client) > 0

    wait(consuming, log, "the worker never started consuming commands")


def stop(process: subprocess.Popen[bytes], sig: int, timeout: float = 30.0) -> None:
    if process.poll() is None:
        os.killpg(process.pid, sig)
        process.wait(timeout=timeout)
