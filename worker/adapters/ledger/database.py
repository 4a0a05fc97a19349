"""Engines for the ledger: PostgreSQL for services, SQLite as the embedded default."""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event, make_url
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError, DisconnectionError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.pool import QueuePool

log = logging.getLogger(__name__)

# What "the ledger is unavailable" looks like: a database error (OperationalError is one),
# or no pooled connection free in time. The work is retried later; nothing is decided.
LEDGER_UNAVAILABLE = (DBAPIError, PoolTimeout)

# A PostgreSQL connection is replaced after between half of this and all of it, so that a
# server-side or network idle limit never meets one that lived for days.
RECYCLE_SECONDS = 1800.0


def make_engine(
    url: str,
    *,
    pool_size: int = 10,
    max_connections: int | None = None,
    pre_ping: bool = True,
    statement_timeout_ms: int | None = None,
    lock_timeout_ms: int | None = None,
    recycle_seconds: float = RECYCLE_SECONDS,
    spread: Callable[[], float] = random.random,
) -> Engine:
    """`pool_size` connections are kept open; up to `max_connections` (default twice the
    pool) under load, so PostgreSQL's own limit can be planned for. `pre_ping` (one round
    trip per checkout) spares commands and tools a connection that died with a restarted
    server; the worker turns it off (see bootstrap). On PostgreSQL the timeouts are set on
    each connection as it opens, so they also cover statements run on psycopg directly; None
    leaves the server's own. Connections are replaced after `recycle_seconds` each, spread
    (see `_recycle_spread`). Errors never show parameters (amounts, accounts, commands)."""
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
    engine = create_engine(
        url,
        pool_size=pool_size,
        max_overflow=most - pool_size,
        pool_pre_ping=pre_ping,
        hide_parameters=True,
        connect_args=_session_options(url, statement_timeout_ms, lock_timeout_ms),
    )
    _recycle_spread(engine, recycle_seconds, spread)
    return engine


def _recycle_spread(engine: Engine, seconds: float, spread: Callable[[], float]) -> None:
    """Each connection is replaced at its first checkout after its own age, between half of
    `seconds` and all of it. SQLAlchemy's `pool_recycle` gives every connection the same
    age: a pool opened in one moment was replaced in one moment (the benchmark's soak saw a
    bump in the p99 in each minute where it happened)."""

    @event.listens_for(engine, "connect")
    def _set_age(_dbapi_connection: Any, record: Any) -> None:
        record.info["replace_at"] = time.monotonic() + seconds * (0.5 + spread() / 2)

    @event.listens_for(engine, "checkout")
    def _replace_when_old(_dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        if time.monotonic() >= record.info.get("replace_at", float("inf")):
            # SQLAlchemy's documented way out of a checkout: it closes this connection and
            # hands over a new one (a connect event, so a new age).
            raise DisconnectionError("connection reached its age")


def open_kept_connections(engine: Engine) -> int:
    """Opens now the connections the pool keeps (its `pool_size`), so that their count is
    the same from the start to the end of a worker's life, instead of rising with each new
    peak of load; returns how many opened. With the ledger unreachable, the rest open on
    demand later, as they always can."""
    pool = engine.pool
    if not isinstance(pool, QueuePool):  # SQLite in memory: one connection per thread
        return 0
    held: list[Connection] = []
    try:
        while len(held) < pool.size():
            held.append(engine.connect())
    except LEDGER_UNAVAILABLE as exc:
        log.info("opened %d of %d ledger connections at start: %s", len(held), pool.size(), exc)
    finally:
        for connection in held:
            connection.close()
    return len(held)


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
