"""Each failure a new operator meets, through the installed `debit-worker`: one `Error:` line
that says what to do, a non-zero exit, and never a traceback."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest

from tests.integration.conftest import POSTGRES, RABBIT, own_vhost
from worker.sandbox import RunningSandbox
from worker.settings import Settings

pytestmark = pytest.mark.integration

CLI = Path(sys.executable).with_name("debit-worker")
SIGNER = {
    "DEBIT_WORKER_PRODUCER_ID": "itest",
    "DEBIT_WORKER_PRODUCER_KEY_ID": "k2",
    "DEBIT_WORKER_PRODUCER_SECRET": "itest-secret-two",
}
REQUEST = ["request", "--account", "acct_1ExpressUS00000001", "--amount", "5", "--currency", "usd"]


@dataclass(frozen=True)
class Answer:
    code: int
    output: str

    @property
    def error(self) -> str:
        """The one `Error:` line (fails the test if there is not exactly one)."""
        lines = [line for line in self.output.splitlines() if line.startswith("Error:")]
        assert len(lines) == 1, self.output
        return lines[0]


def debit_worker(args: list[str], env: dict[str, str], cwd: Path) -> Answer:
    """The installed command, with only `env` of the DEBIT_WORKER_* settings."""
    base = {k: v for k, v in os.environ.items() if not k.startswith("DEBIT_WORKER_")}
    done = subprocess.run(
        [str(CLI), *args],
        env={**base, **env},
        cwd=cwd,  # no stray .env
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    return Answer(done.returncode, done.stdout + done.stderr)


def assert_answered_in_words(answer: Answer, *says: str) -> None:
    assert answer.code != 0, answer.output
    assert "Traceback" not in answer.output, answer.output
    for phrase in says:
        assert phrase in answer.error, answer.output


@pytest.fixture
def empty_database() -> Iterator[str]:
    """A new PostgreSQL database nobody migrated."""
    name = f"debit_empty_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
    with psycopg.connect(POSTGRES, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
def bare_vhost() -> Iterator[str]:
    """A RabbitMQ vhost where no worker ever declared the topology."""
    yield from own_vhost()


def test_an_unreachable_database(tmp_path: Path, closed_port: int) -> None:
    # Given a database address where nothing listens
    env = {"DEBIT_WORKER_DATABASE_URL": f"postgresql+psycopg://u@127.0.0.1:{closed_port}/x"}
    # When a ledger command runs / Then it says which database it cannot reach
    assert_answered_in_words(
        debit_worker(["status"], env, tmp_path),
        f"cannot reach the ledger database at 127.0.0.1:{closed_port}/x",
        "DEBIT_WORKER_DATABASE_URL",
    )


def test_a_database_that_does_not_exist(tmp_path: Path) -> None:
    env = {"DEBIT_WORKER_DATABASE_URL": "postgresql+psycopg://postgres@127.0.0.1:5432/no_such_db"}
    assert_answered_in_words(
        debit_worker(["migrate"], env, tmp_path),
        'CREATE DATABASE "no_such_db"',
        "`debit-worker migrate`",
    )


@pytest.mark.parametrize("args", [["status"], ["consent", "list"], ["requests", "list"]])
def test_a_database_nobody_migrated(tmp_path: Path, empty_database: str, args: list[str]) -> None:
    # Given a new, empty database / When a ledger command runs / Then it says to migrate
    env = {"DEBIT_WORKER_DATABASE_URL": empty_database}
    assert_answered_in_words(
        debit_worker(args, env, tmp_path), "is not migrated", "run `debit-worker migrate`"
    )


@pytest.mark.parametrize("args", [REQUEST, ["dlq", "list"]], ids=["request", "dlq-list"])
def test_a_broker_that_is_down(tmp_path: Path, closed_port: int, args: list[str]) -> None:
    env = {"DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@127.0.0.1:{closed_port}//", **SIGNER}
    assert_answered_in_words(
        debit_worker(args, env, tmp_path),
        f"cannot reach RabbitMQ at 127.0.0.1:{closed_port} vhost /",
        "DEBIT_WORKER_BROKER_URL",
    )


def test_a_broker_that_refuses_the_password(tmp_path: Path) -> None:
    env = {"DEBIT_WORKER_BROKER_URL": f"amqp://guest:Wr0ngPassw0rd@{RABBIT[0]}:{RABBIT[1]}//"}
    answer = debit_worker(REQUEST, {**env, **SIGNER}, tmp_path)
    assert_answered_in_words(answer, "refused the login", "user and password")
    assert "Wr0ngPassw0rd" not in answer.output


def test_a_vhost_without_the_exchanges(tmp_path: Path, bare_vhost: str) -> None:
    # Given a vhost where no worker has declared the topology
    env = {"DEBIT_WORKER_BROKER_URL": f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{bare_vhost}"}
    # When a command is published / Then it says the exchange is missing and how to declare it
    assert_answered_in_words(
        debit_worker(REQUEST, {**env, **SIGNER}, tmp_path),
        "no such exchange",
        "debits.commands",
        "`debit-worker run` declares every exchange and queue",
    )


def test_a_setting_that_is_not_json(tmp_path: Path) -> None:
    env = {"DEBIT_WORKER_PRODUCER_KEYS": "{"}
    assert_answered_in_words(
        debit_worker(["status"], env, tmp_path),
        "DEBIT_WORKER_PRODUCER_KEYS is not valid JSON",
    )


def test_the_janitor_without_a_stripe_key(tmp_path: Path, database_url: str) -> None:
    env = {"DEBIT_WORKER_DATABASE_URL": database_url}
    assert_answered_in_words(
        debit_worker(["janitor", "--once"], env, tmp_path),
        "DEBIT_WORKER_STRIPE_API_KEY is not set",
    )


def test_a_stripe_key_that_stripe_refuses(
    tmp_path: Path, settings: Settings, sandbox: RunningSandbox
) -> None:
    # Given a key the Stripe sandbox does not know
    env = {
        "DEBIT_WORKER_DATABASE_URL": settings.database_url,
        "DEBIT_WORKER_BROKER_URL": settings.broker_url,
        "DEBIT_WORKER_STRIPE_API_KEY": "sk_test_51NotTheSandboxKey",
        "DEBIT_WORKER_STRIPE_API_BASE": sandbox.url,
        "DEBIT_WORKER_RATE_BUDGET_REDIS_URL": "",
    }
    # When the day is proved against Stripe / Then it says to fix the key
    assert_answered_in_words(
        debit_worker(["reconcile", "--day", "2026-12-01"], env, tmp_path),
        "Stripe refused the worker's credentials",
        "set DEBIT_WORKER_STRIPE_API_KEY",
    )


def test_run_as_a_supervisor_with_an_unreachable_database(tmp_path: Path, closed_port: int) -> None:
    # Given the database away when `run --processes 2` migrates
    env = {
        "DEBIT_WORKER_DATABASE_URL": f"postgresql+psycopg://u@127.0.0.1:{closed_port}/x",
        "DEBIT_WORKER_STRIPE_API_KEY": "sk_test_51SupervisorStart",
    }
    # When it starts / Then it stops before starting any worker process, in one line
    assert_answered_in_words(
        debit_worker(["run", "--processes", "2"], env, tmp_path),
        "cannot reach the ledger database",
    )
