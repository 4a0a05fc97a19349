"""Engines for the ledger: PostgreSQL for services, SQLite as the embedded default."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, Insert, Table, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})

        @event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            # WAL lets readers run beside the one writer; busy_timeout waits instead of failing.
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.execute("PRAGMA synchronous=FULL")
            cursor.close()

        return engine
    # No pre-ping: it cost a round trip on every checkout (several per debit). A connection
    # that died with its server fails its first statement instead; SQLAlchemy then discards
    # every pooled connection made before it, and the task retries like any ledger outage.
    return create_engine(
        url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False, pool_recycle=1800
    )


def upsert(conn: Connection, table: Table) -> postgresql.Insert | sqlite.Insert:
    """The dialect's INSERT, which offers ON CONFLICT (both build the same clauses)."""
    if conn.dialect.name == "postgresql":
        return postgresql.insert(table)
    return sqlite.insert(table)


def _insert_or_nothing(conn: Connection, table: Table, values: dict[str, Any]) -> Insert:
    return upsert(conn, table).values(**values).on_conflict_do_nothing()


def insert_ignoring_duplicates(conn: Connection, table: Table, values: dict[str, Any]) -> bool:
    """INSERT … ON CONFLICT DO NOTHING on either database; True when a row was written."""
    # SQLAlchemy keeps an INSERT's rowcount only when asked to: psycopg reports -1 once the
    # cursor is closed, so without this every insert looked like a duplicate on PostgreSQL.
    stmt = _insert_or_nothing(conn, table, values).execution_options(preserve_rowcount=True)
    return conn.execute(stmt).rowcount == 1


def insert_returning_id(conn: Connection, table: Table, values: dict[str, Any]) -> int | None:
    """INSERT … ON CONFLICT DO NOTHING RETURNING id, in one statement on either database
    (SQLite ≥ 3.35); the new row's id, or None when a row with the same key was there."""
    stmt = _insert_or_nothing(conn, table, values).returning(table.c.id)
    row_id = conn.execute(stmt).scalar_one_or_none()
    return None if row_id is None else int(row_id)
