"""Real RabbitMQ and PostgreSQL, the local Stripe sandbox, and a real worker.

Each test session gets its own RabbitMQ virtual host and PostgreSQL database, so runs never
see each other's messages or rows. Without the services these tests skip on a laptop, but
fail when CI is set.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import amqp
import psycopg
import pytest
from celery import Celery
from celery.contrib.testing.worker import start_worker

from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.dead_letters import DeadLetter, DeadLetterStore
from worker.adapters.ledger.migrate import upgrade
from worker.app import build_worker
from worker.sandbox import RunningSandbox, running_sandbox
from worker.settings import Settings, load_settings

RABBIT = ("127.0.0.1", 5672)
POSTGRES = "postgresql://postgres@127.0.0.1:5432/postgres"
ELIGIBLE = (
    "acct_1ExpressUS00000001",
    "acct_1StandardUS0000001",
    "acct_1ExpressJP00000001",
    "acct_1ExpressHK00000001",
    "acct_1LowBalanceUS00001",
)


# Producers the session's worker knows. Secrets are test-only values.
PRODUCER_KEYS: dict[str, dict[str, str]] = {
    "itest": {"k2": "itest-secret-two", "k1": "itest-secret-one"},
    "limited": {"l1": "limited-secret"},
    "flood": {"f1": "flood-secret"},
    "ops": {"o1": "ops-secret"},
    "noreplay": {"n1": "noreplay-secret"},
}
PRODUCERS: dict[str, dict[str, Any]] = {
    "itest": {"retired_keys": ["k0"]},
    "limited": {
        "allowed_reasons": ["platform_charge"],
        "max_per_debit": {"usd": 5000},
        "max_per_day": {"usd": 8000},
    },
    "flood": {"max_per_day": {"usd": 10_000}},
    # The operators' identity: may vouch for dead-letter replays, may not ask for debits.
    "ops": {"may_replay": True, "allowed_reasons": []},
    "noreplay": {},
}
MAX_AGE_SECONDS = 10.0


@dataclass(frozen=True)
class Key:
    producer: str
    key_id: str
    secret: str


DEFAULT_KEY = Key("itest", "k2", PRODUCER_KEYS["itest"]["k2"])
OPERATOR_KEY = Key("ops", "o1", PRODUCER_KEYS["ops"]["o1"])


def sign(body: bytes, key: Key, timestamp: int | None = None) -> dict[str, str]:
    """docs/contract.md "Signing commands", written from the text (not the project helper)."""
    ts = str(int(time.time()) if timestamp is None else timestamp)
    canonical = "\n".join(
        [
            "debit-worker-signature-v1",
            key.producer,
            key.key_id,
            ts,
            hashlib.sha256(body).hexdigest(),
        ]
    ).encode()
    mac = hmac.new(key.secret.encode(), canonical, hashlib.sha256).hexdigest()
    return {
        "x-debit-producer": key.producer,
        "x-debit-key-id": key.key_id,
        "x-debit-timestamp": ts,
        "x-debit-signature": "v1=" + mac,
    }


def _unavailable(why: str) -> None:
    if os.environ.get("CI"):
        pytest.fail(f"CI is set but {why}: .ci/run should have started it")
    pytest.skip(why)


def own_vhost() -> Iterator[str]:
    """A fresh RabbitMQ virtual host for the caller, removed afterwards."""
    name = f"debit-test-{uuid.uuid4().hex[:8]}"
    ctl = shutil.which("rabbitmqctl")
    if ctl is None:
        _unavailable("rabbitmqctl is not installed")
    assert ctl is not None
    try:
        subprocess.run([ctl, "add_vhost", name], check=True, capture_output=True, timeout=30)
        subprocess.run(
            [ctl, "set_permissions", "-p", name, "guest", ".*", ".*", ".*"],
            check=True,
            capture_output=True,
            timeout=30,
        )
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        _unavailable(f"RabbitMQ is not usable ({exc})")
    yield name
    subprocess.run([ctl, "delete_vhost", name], capture_output=True, timeout=30, check=False)


@pytest.fixture(scope="session")
def vhost() -> Iterator[str]:
    yield from own_vhost()


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    yield from own_database()


def own_ledger(url: str) -> Ledger:
    """A ledger on `url` with the integration accounts' consents granted."""
    ledger = Ledger.on(make_engine(url))
    for account in ELIGIBLE:
        ledger.consents.grant(account, "integration-test-agreement", "pytest")
    return ledger


def own_database() -> Iterator[str]:
    """A fresh, migrated PostgreSQL database for the caller, dropped afterwards. Tests that
    kill workers holding leases use their own: every worker's janitor re-enqueues expired
    claims it finds in its database, and the session's worker would take theirs over."""
    name = f"debit_test_{uuid.uuid4().hex[:8]}"
    try:
        with psycopg.connect(POSTGRES, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable(f"PostgreSQL is not reachable ({exc})")
    url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    engine = make_engine(url)
    upgrade(engine)
    engine.dispose()
    yield url
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# A restricted key: the whole integration suite runs on one (issue 8: rk_ keys work).
STRIPE_KEY = "rk_test_51IntegrationRestrictedKeyA1b2C3"


@pytest.fixture(scope="session")
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox(api_key=STRIPE_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def settings(vhost: str, database_url: str, sandbox: RunningSandbox) -> Settings:
    return load_settings(
        broker_url=f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{vhost}",
        database_url=database_url,
        stripe_api_key=sandbox.api_key,
        stripe_api_base=sandbox.url,
        concurrency=8,
        metrics_port=0,  # tests run several workers at once; the probe tests pick a port
        relay_interval_seconds=1.0,
        retry_base_seconds=1.0,
        retry_max_seconds=2.0,
        require_signatures=True,
        signature_max_age_seconds=MAX_AGE_SECONDS,
        producer_keys=PRODUCER_KEYS,
        producers=PRODUCERS,
    )


@pytest.fixture(scope="session")
def ledger(settings: Settings) -> Ledger:
    return own_ledger(settings.database_url)


@pytest.fixture(scope="session")
def worker_app(settings: Settings, ledger: Ledger) -> Iterator[Celery]:
    """A real worker (threads pool) consuming from the real broker for the whole session."""
    app, _ = build_worker(settings)
    with start_worker(app, pool="threads", concurrency=8, perform_ping_check=False):
        yield app


@dataclass
class PlainAmqp:
    """A plain AMQP client (py-amqp, no Celery, no project helper), as any producer or
    consumer in another language would use the broker."""

    connection: amqp.Connection
    channel: Any = None
    events_queue: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)

    def publish(
        self,
        body: bytes | str,
        content_type: str = "application/json",
        headers: dict[str, str] | None = None,
    ) -> None:
        """Publishes `body` with `headers`; signed with the default key when None."""
        raw = body.encode() if isinstance(body, str) else body
        chosen = sign(raw, DEFAULT_KEY) if headers is None else headers
        message = amqp.Message(
            raw, content_type=content_type, delivery_mode=2, application_headers=chosen
        )
        self.channel.basic_publish(
            message, exchange="debits.commands", routing_key="debit.requested", mandatory=True
        )

    def publish_command(self, **fields: Any) -> str:
        self.publish(json.dumps(fields))
        return str(fields["request_id"])

    def event_for(self, request_id: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.events_for(request_id, 1, timeout)[0]

    def events_for(
        self, request_id: str, count: int, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        return self.events_until(
            request_id, lambda mine: len(mine) >= count, f"{count} event(s)", timeout
        )

    def events_until(
        self,
        request_id: str,
        enough: Callable[[list[dict[str, Any]]], bool],
        wanted: str,
        timeout: float = 30.0,
    ) -> list[dict[str, Any]]:
        """The request's events received so far, once `enough` says they are."""
        deadline = time.monotonic() + timeout
        while True:
            mine = [e for e in self.received if e["subject"] == request_id]
            if enough(mine):
                return mine
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"{len(mine)} event(s) for {request_id} in {timeout} s, wanted {wanted}"
                )
            message = self.channel.basic_get(self.events_queue, no_ack=True)
            if message is None:
                time.sleep(0.05)
                continue
            self.received.append(json.loads(message.body))


def kept_dead_letters(
    ledger: Ledger, body: bytes, count: int = 1, timeout: float = 30.0
) -> list[DeadLetter]:
    """The dead letters carrying `body`, once `count` are in the ledger (the workers'
    dead-letter keepers move them there from debits.dead-letter every few seconds)."""
    store = DeadLetterStore(ledger.engine, utc_now)
    deadline = time.monotonic() + timeout
    while True:
        found = [d for d in store.listed(state=None, limit=100_000) if d.body == body]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.2)


def connect(vhost: str) -> amqp.Connection:
    connection = amqp.Connection(
        f"{RABBIT[0]}:{RABBIT[1]}",
        userid="guest",
        password="guest",
        virtual_host=vhost,
        # py-amqp waits for each publisher confirm only with this flag; confirm_select alone
        # turns confirms on without waiting for them.
        confirm_publish=True,
    )
    connection.connect()
    return connection


@pytest.fixture
def broker(settings: Settings, vhost: str, worker_app: Celery) -> Iterator[PlainAmqp]:
    connection = connect(vhost)
    channel = connection.channel()
    channel.confirm_select()
    queue = f"test-events-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, exclusive=True, auto_delete=True)
    channel.queue_bind(queue, "debits.events", routing_key="debit.*")
    client = PlainAmqp(connection, channel, queue)
    yield client
    connection.close()


def payments_for(sandbox: RunningSandbox, request_id: str) -> list[dict[str, Any]]:
    """The payments the sandbox made for `request_id` (its charges' metadata names it)."""
    return [
        p for p in sandbox.admin.state().payments if p["metadata"].get("request_id") == request_id
    ]


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def closed_port() -> int:
    """A local port where nothing listens."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port
