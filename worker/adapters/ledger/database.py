"""Engines for the ledger: PostgreSQL for services, SQLite as the embedded default."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.exc import TimeoutError as PoolTimeout

# What "the ledger is unavailable" looks like: a database error (OperationalError is one),
# or no pooled connection free in time. The work is retried later; nothing is decided.
LEDGER_UNAVAILABLE = (DBAPIError, PoolTimeout)


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_connections: int | None = None,
    pre_ping: bool = True,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
) -> Engine:
    """`pool_size` connections are kept open; up to `max_connections` (default twice the
    pool) under load, so PostgreSQL's own limit can be planned for. `pre_ping` (one round
    trip per checkout) spares commands and tools a connection that died with a restarted
    server; the worker turns it off (see bootstrap). On PostgreSQL the timeouts are set on
    each connection as it opens, so they also cover statements run on psycopg directly; None
    leaves the server's own. Errors never show parameters (amounts, accounts, commands)."""
    most = max(pool_size, max_connections if max_connections is not None else 2 * pool_size)
    if url.startswith("sqlite"):
        # A file's pool is sized like PostgreSQL's (SQLAlchemy's default is 5 + 10); an
        # in-memory database keeps one connection per thread, and takes no size.
        in_memory = make_url(url).database in {None, "", ":memory:"}
        sized = {} if in_memory else {"pool_size": pool_size, "max_overflow": most - pool_size}
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
            **sized,
        )

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the one writer; busy_timeout waits instead of failing.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=most - pool_size,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        hide_parameters=True,
        connect_args=_session_options(url, statement_timeout_ms, lock_timeout_ms),
    )


def _session_options(
    url: str, statement_timeout_ms: int | None, lock_timeout_ms: int | None
) -> dict[str, Any]:
    """libpq's `options` for PostgreSQL: the timeouts, after any options the URL gives."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "postgresql":
        return {}
    wanted = [
        f"-c {name}={value}"
        for name, value in (
            ("statement_timeout", statement_timeout_ms),
            ("lock_timeout", lock_timeout_ms),
        )
        if value is not None
    ]
    if not wanted:
        return {}
    given = parsed.query.get("options")
    given_text = " ".join(given) if isinstance(given, tuple) else given
    return {"options": " ".join([given_text, *wanted] if given_text else wanted)}


def single_statements(engine: Engine) -> Engine:
    """The same pool, with every statement its own transaction. For a lone read or a lone
    write, this saves the BEGIN and the COMMIT (or the ROLLBACK that closes a read): two of
    its three round trips to PostgreSQL. Only for work that is one statement: two statements
    on it are two transactions."""
    return engine.execution_options(isolation_level="AUTOCOMMIT")


def upsert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which offers ON CONFLICT (both build the same clauses)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


# Statements on the hot path are built once per (database, table) and executed with their
# values as parameters: building a statement and computing its cache key on every call
# cost more CPU than executing it.
_OR_NOTHING: dict[tuple[str, str], Insert] = {}


def _insert_or_nothing(conn: Connection, table: Table) -> Insert:
    key = (conn.dialect.name, table.name)
    stmt = _OR_NOTHING.get(key)
    if stmt is None:
        # SQLAlchemy keeps an INSERT's rowcount only when asked to: psycopg reports -1 once
        # the cursor is closed, so without this every insert looked like a duplicate.
        stmt = (
            upsert(conn, table).on_conflict_do_nothing().execution_options(preserve_rowcount=True)
        )
        _OR_NOTHING[key] = stmt  # a race builds it twice, harmlessly
    return stmt


def insert_ignoring_duplicates(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on either database; True when a row was written."""
    return conn.execute(_insert_or_nothing(conn, table), values).rowcount == 1
