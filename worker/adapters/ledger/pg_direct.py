"""Statements on PostgreSQL run on psycopg directly (statements.OnPsycopg compiles them to
psycopg's `%(name)s` text and converts their parameters).

For these statements SQLAlchemy's own work per execution cost more of the worker's CPU than
psycopg's execution of them. Each borrows a connection from the engine's pool and runs alone
in autocommit mode (no BEGIN or COMMIT round trip). Failures come out as SQLAlchemy's
DBAPIError, so callers treat them as any ledger error, and a broken connection is dropped
from the pool instead of being handed out again.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, cast

import psycopg
from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError


def run_alone(engine: Engine, sql: str, params: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Run one statement as its own transaction on a pooled connection; its first row, or
    None when it returns no row."""
    try:
        pooled = engine.raw_connection()
    except psycopg.Error as exc:  # no connection to be had: SQLAlchemy's wording, as below
        raise _wrapped(engine, sql, params, exc) from exc
    conn = cast(psycopg.Connection[Any], pooled.driver_connection)
    try:
        conn.autocommit = True
        try:
            cursor = conn.execute(sql, params)
            return cursor.fetchone() if cursor.description is not None else None
        finally:
            if not (conn.broken or conn.closed):
                conn.autocommit = False  # the pool's other users expect transactions
    except psycopg.Error as exc:
        if conn.broken or conn.closed:
            pooled.invalidate(exc)
        raise _wrapped(engine, sql, params, exc) from exc
    finally:
        pooled.close()


def _wrapped(
    engine: Engine, sql: str, params: Mapping[str, Any], exc: psycopg.Error
) -> BaseException:
    """As SQLAlchemy wraps its own errors, parameters hidden as the engine hides them."""
    return DBAPIError.instance(
        sql, dict(params), exc, psycopg.Error, hide_parameters=engine.hide_parameters
    )
