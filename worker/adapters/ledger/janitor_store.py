"""The janitor's queries: claims abandoned by a dead worker, and keys about to expire.

The abandoned-claims query runs every few seconds in every worker process: it reads only
open requests (the status index), however many finished ones the table holds."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import ColumnElement, Engine, and_, or_, select, update

from worker.adapters.ledger.audit import audit_entry
from worker.adapters.ledger.records import RequestRecord, record_of
from worker.adapters.ledger.statements import Transition, given
from worker.adapters.ledger.tables import Status, debit_requests

REQUEUED: Final = "requeued"  # the audit action of a take-over by the janitor

_OPEN = (Status.RECEIVED, Status.ATTEMPTING)
_c = debit_requests.c
Moment = datetime | ColumnElement[datetime]


def _abandoned(now: Moment, untouched_since: Moment) -> ColumnElement[bool]:
    """Open, and either its lease ran out, or nobody has held or touched it since
    `untouched_since` (a released lease means a retry is scheduled; only a long silence
    means it was lost)."""
    return and_(
        or_(*(_c.status == str(s) for s in _OPEN)),
        or_(
            and_(_c.lease_until.is_not(None), _c.lease_until < now),
            and_(_c.lease_until.is_(None), _c.updated_at < untouched_since),
        ),
    )


_now = given("now", _c.updated_at)
# Still abandoned (only one janitor wins): lease cleared, touched now, with an entry naming
# the lease it found (the owner that died, and until when it held the request).
_TAKE_OVER = Transition(
    update(debit_requests)
    .where(
        _c.request_id == given("request_id", _c.request_id),
        _abandoned(_now, given("untouched_since", _c.updated_at)),
    )
    .values(lease_owner=None, lease_until=None, updated_at=_now)
    .returning(_c.request_id),
    (audit_entry(REQUEUED),),
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
    abandoned = _abandoned(now, now - timedelta(seconds=stale_after))
    return _records(engine, abandoned, _c.updated_at, limit)


def take_over(
    engine: Engine, record: RequestRecord, *, now: datetime, stale_after: float, actor: str
) -> bool:
    """Mark an abandoned claim (as `abandoned_claims` read it) as re-enqueued by `actor`:
    lease cleared, touched now, audited. Only one janitor wins; the row is not abandoned
    again until `stale_after` has passed once more."""
    held = record.lease_until.isoformat() if record.lease_until else None
    params = {
        "request_id": record.request_id,
        "now": now,
        "untouched_since": now - timedelta(seconds=stale_after),
        "owner": actor,
        "detail": {"lease_owner": record.lease_owner, "lease_until": held},
    }
    with engine.begin() as conn:
        return _TAKE_OVER.in_transaction(conn, params) is not None


def expiring_attempts(
    engine: Engine, *, first_attempt_before: datetime, limit: int
) -> list[RequestRecord]:
    """Attempting requests whose first Stripe call is older than the cut-off."""
    where = and_(_c.status == Status.ATTEMPTING, _c.first_attempt_at < first_attempt_before)
    return _records(engine, where, _c.first_attempt_at, limit)


def needing_reconciliation(engine: Engine, *, limit: int) -> list[RequestRecord]:
    return _records(engine, _c.status == Status.NEEDS_RECONCILIATION, _c.updated_at, limit)
