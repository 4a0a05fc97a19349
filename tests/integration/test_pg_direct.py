"""Statements run on psycopg directly (worker/adapters/ledger/pg_direct.py), on a real
PostgreSQL: they commit alone, hand a clean connection back to the pool, and fail the way
every other ledger statement fails (SQLAlchemy's exceptions, a broken connection dropped)."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from sqlalchemy import Engine, text
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError

from tests.integration.conftest import own_database
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.pg_direct import run_alone

pytestmark = pytest.mark.integration


@pytest.fixture
def engine() -> Iterator[Engine]:
    # One pooled connection, no pre-ping (as in the worker): whatever a statement leaves on
    # it, the next statement finds.
    for url in own_database():
        engine = make_engine(url, pool_size=1, max_connections=1, pre_ping=False)
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE notes (id int PRIMARY KEY, body text NOT NULL)"))
        try:
            yield engine
        finally:
            engine.dispose()


def a_second_session(engine: Engine) -> psycopg.Connection[tuple[object, ...]]:
    url = engine.url.render_as_string(hide_password=False)
    return psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=True)


def test_a_write_is_committed_alone_and_its_returned_row_comes_back(engine: Engine) -> None:
    # Given an empty table
    # When a row is inserted with RETURNING, and a statement without rows runs
    row = run_alone(
        engine,
        "INSERT INTO notes VALUES (%(id)s, %(body)s) RETURNING id, body",
        {"id": 1, "body": "a"},
    )
    none = run_alone(engine, "UPDATE notes SET body = 'b' WHERE id = %(id)s", {"id": 1})

    # Then the row comes back, the statement without rows gives None, and another session
    # sees both writes committed (nothing sent a COMMIT)
    assert (row, none) == ((1, "a"), None)
    with a_second_session(engine) as other:
        assert other.execute("SELECT body FROM notes WHERE id = 1").fetchone() == ("b",)


def test_the_connection_goes_back_to_the_pool_opening_transactions_again(engine: Engine) -> None:
    # Given a statement run alone on the pool's only connection
    run_alone(engine, "SELECT 1", {})
    # When the pool hands that connection out to ordinary SQLAlchemy work
    with engine.connect() as conn:
        conn.execute(text("INSERT INTO notes VALUES (2, 'uncommitted')"))
        status = conn.connection.driver_connection.info.transaction_status  # type: ignore[union-attr]
        conn.rollback()

    # Then it opens a transaction block as usual (not autocommit), so a rollback undoes
    assert status == psycopg.pq.TransactionStatus.INTRANS
    assert run_alone(engine, "SELECT count(*) FROM notes", {}) == (0,)


def test_a_constraint_violation_is_sqlalchemys_integrity_error_and_the_pool_stays_usable(
    engine: Engine,
) -> None:
    # Given a row with id 1
    run_alone(engine, "INSERT INTO notes VALUES (1, 'a')", {})
    # When a second row with id 1 is inserted
    with pytest.raises(IntegrityError) as raised:
        run_alone(engine, "INSERT INTO notes VALUES (1, 'b')", {})

    # Then the error is SQLAlchemy's, naming psycopg's, and the same pooled connection runs
    # the next statement (no transaction was left aborted on it)
    assert isinstance(raised.value.orig, psycopg.errors.UniqueViolation)
    assert run_alone(engine, "SELECT body FROM notes", {}) == ("a",)


def test_a_broken_connection_is_an_operational_error_and_is_not_handed_out_again(
    engine: Engine,
) -> None:
    # Given the pool's only connection, which the server then terminates
    pid = run_alone(engine, "SELECT pg_backend_pid()", {})
    assert pid is not None
    with a_second_session(engine) as other:
        other.execute("SELECT pg_terminate_backend(%s)", (pid[0],))

    # When a statement runs on it
    with pytest.raises(DBAPIError) as raised:
        run_alone(engine, "SELECT 1", {})

    # Then it fails as OperationalError (what the task retries on), and the next statement
    # runs on a new connection
    assert isinstance(raised.value, OperationalError)
    after = run_alone(engine, "SELECT pg_backend_pid()", {})
    assert after is not None
    assert after != pid


def test_a_database_that_refuses_connections_fails_as_sqlalchemys_operational_error() -> None:
    # Given an engine whose server is not there (nothing listens on port 1)
    engine = make_engine(
        "postgresql+psycopg://postgres@127.0.0.1:1/nowhere", pool_size=1, max_connections=1
    )
    try:
        # When a statement needs a connection
        # Then it fails as every ledger statement does when the database is away
        with pytest.raises(OperationalError):
            run_alone(engine, "SELECT 1", {})
    finally:
        engine.dispose()
