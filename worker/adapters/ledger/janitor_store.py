"""The janitor's queries: claims abandoned by a dead worker, and keys about to expire."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update

from worker.adapters.ledger.records import RequestRecord, record_of
from worker.adapters.ledger.tables import Status, debit_requests

_OPEN = (Status.RECEIVED, Status.ATTEMPTING)


def _abandoned(now: datetime, stale_after: float) -> ColumnElement[bool]:
    """Open, and either its lease ran out, or nobody has held or touched it for a while
    (a released lease means a retry is scheduled; only a long silence means it was lost)."""
    c = debit_requests.c
    return and_(
        c.status.in_([s.value for s in _OPEN]),
        or_(
            and_(c.lease_until.is_not(None), c.lease_until < now),
            and_(c.lease_until.is_(None), c.updated_at < now - timedelta(seconds=stale_after)),
        ),
    )


def _records(
    engine: Engine, where: ColumnElement[bool], order: ColumnElement[Any], limit: int
) -> list[RequestRecord]:
    with engine.connect() as conn:
        rows = conn.execute(select(debit_requests).where(where).order_by(order).limit(limit))
        return [record_of(row) for row in rows.mappings()]


def abandoned_claims(
    engine: Engine, *, now: datetime, stale_after: float, limit: int
) -> list[RequestRecord]:
    return _records(engine, _abandoned(now, stale_after), debit_requests.c.updated_at, limit)


def take_over(engine: Engine, request_id: str, *, now: datetime, stale_after: float) -> bool:
    """Mark an abandoned claim as re-enqueued (lease cleared, touched now). Only one janitor
    wins; the row is not abandoned again until `stale_after` has passed once more."""
    with engine.begin() as conn:
        return bool(
            conn.execute(
                update(debit_requests)
                .where(debit_requests.c.request_id == request_id, _abandoned(now, stale_after))
                .values(lease_owner=None, lease_until=None, updated_at=now)
            ).rowcount
        )


def expiring_attempts(
    engine: Engine, *, first_attempt_before: datetime, limit: int
) -> list[RequestRecord]:
    """Attempting requests whose first Stripe call is older than the cut-off."""
    c = debit_requests.c
    where = and_(c.status == Status.ATTEMPTING, c.first_attempt_at < first_attempt_before)
    return _records(engine, where, c.first_attempt_at, limit)


def needing_reconciliation(engine: Engine, *, limit: int) -> list[RequestRecord]:
    c = debit_requests.c
    return _records(engine, c.status == Status.NEEDS_RECONCILIATION, c.updated_at, limit)
