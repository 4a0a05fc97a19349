"""The worker's ledger engine on a real PostgreSQL: every pooled connection (the ones psycopg
is used on directly too) carries the statement and lock timeouts, a statement or lock wait
past them fails as the ledger being unavailable, errors never show a statement's
parameters, and the pool has a connection for every thread of the process at once, keeping
only its pool size open after a burst."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Iterator
from datetime import datetime
from typing import cast

import psycopg
import pytest
from celery import Celery
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.pool import QueuePool

from tests.integration.conftest import own_database
from tests.unit.fakes import FakePublisher, FakeStripe
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE, make_engine, open_kept_connections
from worker.adapters.ledger.pg_direct import run_alone
from worker.bootstrap import BACKGROUND_THREADS, build_services
from worker.settings import Settings, load_settings

pytestmark = pytest.mark.integration

# A parameter value no error message may show.
PARAMETER = "param-value-7f3a9c"


@pytest.fixture(scope="module")
def database_url() -> Iterator[str]:
    yield from own_database()


def worker_ledger(database_url: str, **overrides: object) -> Ledger:
    """The ledger exactly as a worker process builds it from its settings (2 worker threads
    unless told)."""
    settings: Settings = load_settings(
        **{
            "broker_url": "memory://",
            "database_url": database_url,
            "stripe_api_key": "sk_test_engine",
            "concurrency": 2,
            **overrides,
        }
    )
    app = Celery("ledger-engine-test", broker="memory://", set_as_current=False)
    services = build_services(settings, app, stripe_port=FakeStripe(), publisher=FakePublisher())
    return services.ledger


@pytest.fixture
def ledger(database_url: str) -> Iterator[Ledger]:
    built = worker_ledger(
        database_url, database_statement_timeout_ms=300, database_lock_timeout_ms=200
    )
    yield built
    built.engine.dispose()


def shown(engine: Engine, setting: str) -> tuple[str, str]:
    """The setting as SQLAlchemy's connections see it, and as psycopg-direct statements do."""
    with engine.connect() as conn:
        through_sqlalchemy = conn.execute(text(f"SHOW {setting}")).scalar_one()
    direct = run_alone(engine, f"SHOW {setting}", {})
    assert direct is not None
    return str(through_sqlalchemy), str(direct[0])


def test_by_default_every_pooled_connection_has_a_30_s_statement_and_5_s_lock_timeout(
    database_url: str,
) -> None:
    # Given the worker's ledger with the default settings
    engine = worker_ledger(database_url).engine
    try:
        # When each timeout is read on a pooled connection, through either path
        # Then both are the defaults
        assert shown(engine, "statement_timeout") == ("30s", "30s")
        assert shown(engine, "lock_timeout") == ("5s", "5s")
    finally:
        engine.dispose()


def test_the_timeouts_follow_the_settings(ledger: Ledger) -> None:
    assert shown(ledger.engine, "statement_timeout") == ("300ms", "300ms")
    assert shown(ledger.engine, "lock_timeout") == ("200ms", "200ms")


def test_a_statement_past_the_statement_timeout_is_cancelled_as_the_ledger_unavailable(
    ledger: Ledger,
) -> None:
    # Given a statement timeout of 300 ms / When statements run longer, on either path
    with pytest.raises(LEDGER_UNAVAILABLE) as direct:
        run_alone(ledger.engine, "SELECT pg_sleep(5)", {})
    with pytest.raises(LEDGER_UNAVAILABLE) as through_sqlalchemy, ledger.engine.connect() as conn:
        conn.execute(text("SELECT pg_sleep(5)"))
    # Then PostgreSQL cancels each: an error the worker retries as a ledger outage
    for raised in (direct.value, through_sqlalchemy.value):
        assert isinstance(raised, DBAPIError)
        assert isinstance(raised.orig, psycopg.errors.QueryCanceled)


def test_a_lock_wait_past_the_lock_timeout_fails_as_the_ledger_unavailable(
    ledger: Ledger,
) -> None:
    # Given another session holding a lock on the consents table
    url = ledger.engine.url.set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(url) as other:
        other.execute("LOCK TABLE consents IN ACCESS EXCLUSIVE MODE")
        # When the ledger reads the consents / Then it gives up after the lock timeout
        with pytest.raises(LEDGER_UNAVAILABLE) as raised:
            ledger.consents.list(None)
        other.rollback()
    assert isinstance(raised.value, DBAPIError)
    assert isinstance(raised.value.orig, psycopg.errors.LockNotAvailable)


def test_sql_errors_never_show_the_statements_parameters(ledger: Ledger) -> None:
    # Given statements that fail while carrying a parameter, on either path
    with pytest.raises(LEDGER_UNAVAILABLE) as direct:
        run_alone(ledger.engine, "SELECT %(v)s::text FROM no_such_table", {"v": PARAMETER})
    with pytest.raises(LEDGER_UNAVAILABLE) as through_sqlalchemy, ledger.engine.connect() as conn:
        conn.execute(text("SELECT CAST(:v AS text) FROM no_such_table"), {"v": PARAMETER})
    # Then the errors name the failure, and hide the value
    for raised in (direct.value, through_sqlalchemy.value):
        assert "no_such_table" in str(raised)
        assert PARAMETER not in str(raised)
        assert PARAMETER not in repr(raised)


def test_every_thread_of_a_worker_process_can_hold_a_connection_at_once(
    database_url: str,
) -> None:
    # Given the ledger of a worker process with 6 worker threads
    concurrency = 6
    engine = worker_ledger(database_url, concurrency=concurrency).engine
    threads = concurrency + BACKGROUND_THREADS
    everyone_connected = threading.Barrier(threads, timeout=10)
    failures: list[BaseException] = []

    def hold_a_connection() -> None:
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                everyone_connected.wait()
        except (threading.BrokenBarrierError, *LEDGER_UNAVAILABLE) as exc:
            failures.append(exc)

    # When every one of its threads holds a connection at the same moment
    workers = [threading.Thread(target=hold_a_connection) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=60)
    engine.dispose()
    # Then none waited in vain for the pool
    assert failures == []


def _server_now(database_url: str) -> datetime:
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return cast(datetime, row[0])


def _opened_since(database_url: str, since: datetime) -> int:
    """PostgreSQL's count of the connections to the test's database opened since `since`
    and still open, this one excepted (other tests' closed ones may still be exiting)."""
    with psycopg.connect(database_url.replace("+psycopg", "")) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND backend_start >= %s",
            (since,),
        ).fetchone()
    assert row is not None
    return int(row[0])


def test_after_a_burst_a_worker_process_keeps_only_its_pool_size_of_connections(
    database_url: str,
) -> None:
    # Given a worker process with 3 worker threads, keeping 5 ledger connections
    since = _server_now(database_url)
    engine = worker_ledger(database_url, concurrency=3, database_pool_size=5).engine
    try:
        # When every one of its threads holds a connection at the same moment
        threads = 3 + BACKGROUND_THREADS
        everyone_connected = threading.Barrier(threads, timeout=10)

        def hold_a_connection() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
                everyone_connected.wait()

        workers = [threading.Thread(target=hold_a_connection) for _ in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(timeout=30)

        # Then each had one, and once they are back only 5 are still open (a closed
        # connection's server process ends a moment later)
        assert not everyone_connected.broken
        deadline = time.monotonic() + 5
        while _opened_since(database_url, since) > 5 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _opened_since(database_url, since) == 5
        assert engine.pool.checkedin() == 5  # type: ignore[attr-defined]
    finally:
        engine.dispose()


def _backend_pid(conn: Connection) -> int:
    return int(conn.execute(text("SELECT pg_backend_pid()")).scalar_one())


def test_each_pooled_connection_is_replaced_at_its_own_age_not_all_at_once(
    database_url: str,
) -> None:
    # Given two connections opened in one moment, whose ages are half the recycle period
    # and all of it (the lowest and the highest draw of the spread)
    draws = itertools.cycle([0.0, 1.0])
    engine = make_engine(
        database_url,
        pool_size=2,
        max_connections=2,
        recycle_seconds=1.0,
        spread=lambda: next(draws),
    )
    try:
        with engine.connect() as first, engine.connect() as second:
            first_pid, second_pid = _backend_pid(first), _backend_pid(second)
        # When both are checked out again past the first one's age only
        time.sleep(0.6)
        with engine.connect() as first, engine.connect() as second:
            now = {
                _backend_pid(first),
                _backend_pid(second),
            }
        # Then exactly one was replaced by a new backend, and the pool still holds two
        assert len(now) == 2
        assert len(now & {first_pid, second_pid}) == 1
        assert cast(QueuePool, engine.pool).checkedin() == 2
    finally:
        engine.dispose()


def test_a_worker_opens_the_connections_its_pool_keeps_at_start(database_url: str) -> None:
    # Given a worker process's engine that keeps 3 connections, none opened yet
    since = _server_now(database_url)
    engine = worker_ledger(database_url, concurrency=2, database_pool_size=3).engine
    try:
        assert _opened_since(database_url, since) == 0
        # When its connections are opened at start
        opened = open_kept_connections(engine)
        # Then PostgreSQL sees the 3, kept open in the pool
        assert opened == 3
        assert _opened_since(database_url, since) == 3
        assert cast(QueuePool, engine.pool).checkedin() == 3
    finally:
        engine.dispose()


def test_with_the_ledger_unreachable_a_worker_starts_with_no_connection_open(
    closed_port: int,
) -> None:
    # Given a worker process's engine for a database that does not answer
    engine = make_engine(f"postgresql+psycopg://u@127.0.0.1:{closed_port}/x", pool_size=3)
    # When its connections are opened at start / Then none is, and nothing is raised
    assert open_kept_connections(engine) == 0
    engine.dispose()
