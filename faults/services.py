"""The moving parts the harness owns: its own RabbitMQ vhost and PostgreSQL database, a
sandbox process, and real `debit-worker run` processes it can kill and restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg

from schemas.signing import Signer
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.migrate import upgrade
from worker.adapters.rate_budget import ENDPOINT_CLASSES
from worker.ops.crashpoints import EXIT_CODES
from worker.sandbox import SandboxAdmin

RABBIT_HOST = "127.0.0.1:5672"
POSTGRES_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
CLI = str(Path(sys.executable).with_name("debit-worker"))
CRASH_KINDS = {code: f"crash_point_{name}" for name, code in EXIT_CODES.items()}


def rabbitmqctl(*args: str, timeout: float = 60) -> None:
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        raise RuntimeError("rabbitmqctl is not installed")
    subprocess.run([ctl, *args], check=True, capture_output=True, timeout=timeout)


@contextmanager
def own_vhost(prefix: str) -> Iterator[str]:
    name = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", name)
    rabbitmqctl("set_permissions", "-p", name, "guest", ".*", ".*", ".*")
    try:
        yield name
    finally:
        subprocess.run(
            ["rabbitmqctl", "delete_vhost", name], capture_output=True, timeout=60, check=False
        )


@contextmanager
def own_database(prefix: str) -> Iterator[str]:
    name = f"{prefix}_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    try:
        yield url
    finally:
        for _ in range(30):  # PostgreSQL may be restarting
            try:
                with psycopg.connect(POSTGRES_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
                break
            except psycopg.OperationalError:
                time.sleep(1)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextmanager
def sandbox_process(log_dir: Path) -> Iterator[SandboxAdmin]:
    port = free_port()
    log = (log_dir / "sandbox.log").open("wb")
    proc = subprocess.Popen(
        [CLI, "sandbox", "--port", str(port)], stdout=log, stderr=subprocess.STDOUT
    )
    admin = SandboxAdmin(f"http://127.0.0.1:{port}", timeout=60)
    try:
        deadline = time.monotonic() + 60  # its imports alone take seconds on a busy machine
        while not admin.healthy():
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("the sandbox did not start; see sandbox.log")
            time.sleep(0.1)
        yield admin
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


@dataclass
class WorkerPool:
    """`debit-worker run` processes: started, killed, and restarted when they die."""

    env: dict[str, str]
    log_dir: Path
    size: int
    concurrency: int
    procs: dict[int, subprocess.Popen[bytes]] = field(default_factory=dict)
    exits: Counter[str] = field(default_factory=Counter)
    starts: int = 0
    started_at: list[datetime] = field(default_factory=list)  # when each start happened
    _expected: set[int] = field(default_factory=set)  # pids we killed on purpose
    _counted: set[int] = field(default_factory=set)

    def start_all(self) -> None:
        for slot in range(self.size):
            self.start(slot)

    def start(self, slot: int) -> None:
        self.starts += 1
        self.started_at.append(datetime.now(UTC))
        log = (self.log_dir / f"worker-{slot}.log").open("ab")
        self.procs[slot] = subprocess.Popen(
            [CLI, "run", "--no-migrate", f"--concurrency={self.concurrency}"],
            env={**os.environ, **self.env},
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()

    def kill(self, slot: int, sig: signal.Signals) -> int | None:
        """The pid signalled; None when the slot's process had already ended."""
        proc = self.procs[slot]
        if proc.poll() is None:
            self._expected.add(proc.pid)
            proc.send_signal(sig)
            return proc.pid
        return None

    def alive_except(self, slot: int) -> int:
        """How many of the other slots' processes are running."""
        return sum(1 for other, proc in self.procs.items() if other != slot and proc.poll() is None)

    def wait_ended(self, slot: int, timeout: float = 10.0) -> None:
        # measured anyway if it outlives the wait: a SIGKILLed process starts nothing new
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.procs[slot].wait(timeout=timeout)

    def reap(self) -> list[int]:
        """Slots whose process has ended; counts why (our signal, a crash point, other)."""
        ended = []
        for slot, proc in list(self.procs.items()):
            code = proc.poll()
            if code is None or proc.pid in self._counted:
                continue
            ended.append(slot)
            self._counted.add(proc.pid)
            if proc.pid in self._expected:
                self._expected.discard(proc.pid)
            elif code in CRASH_KINDS:
                self.exits[CRASH_KINDS[code]] += 1
            else:
                self.exits[f"unexpected_exit_{code}"] += 1
        return ended

    def stop_all(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                self._expected.add(proc.pid)
                proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def grant_consents(database_url: str, accounts: tuple[str, ...]) -> None:
    ledger = Ledger.on(make_engine(database_url, pool_size=1))
    for account in accounts:
        ledger.consents.grant(account, "fault-harness-agreement", "faults")
    ledger.engine.dispose()


# The harness is a producer like any other: its commands are signed, and the workers know
# its key. (A test-only secret; never a real one.)
HARNESS_SIGNER = Signer("fault-harness", "k1", "fault-harness-test-secret")


def worker_env(vhost: str, database_url: str, sandbox_url: str, **extra: Any) -> dict[str, str]:
    env = {
        "DEBIT_WORKER_PRODUCER_KEYS": json.dumps(
            {HARNESS_SIGNER.producer: {HARNESS_SIGNER.key_id: HARNESS_SIGNER.secret}}
        ),
        "DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@{RABBIT_HOST}/{vhost}",
        "DEBIT_WORKER_DATABASE_URL": database_url,
        "DEBIT_WORKER_STRIPE_API_KEY": "sk_test_sandbox",
        "DEBIT_WORKER_STRIPE_API_BASE": sandbox_url,
        "DEBIT_WORKER_SENTRY_DSN": "",
    }
    if "stripe_rate_limit" in extra and "stripe_endpoint_limits" not in extra:
        # The fault run's budget is not what it tests: every endpoint may go at the global
        # rate given (Stripe's default would hold each to 25/s).
        rate = float(extra["stripe_rate_limit"])
        extra = {
            **extra,
            "stripe_endpoint_limits": json.dumps(dict.fromkeys(ENDPOINT_CLASSES, rate)),
        }
    env.update({f"DEBIT_WORKER_{k.upper()}": str(v) for k, v in extra.items()})
    return env
