"""Reading requests for operators (`debit-worker requests list`): newest first, filtered.

Served by indexes (migration 0006): (account, received_at) for one account, received_at for
the newest requests of any other filter (producers are few, so their newest rows come early
in that order), status for the rare states.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Engine, select

from worker.adapters.ledger.records import RequestRecord, record_of
from worker.adapters.ledger.tables import debit_requests

_c = debit_requests.c


@dataclass(frozen=True)
class RequestQuery:
    states: tuple[str, ...] = ()  # any of these; empty: every state
    account: str | None = None
    producer: str | None = None
    since: datetime | None = None  # received at or after
    limit: int = 50


def list_requests(engine: Engine, query: RequestQuery) -> list[RequestRecord]:
    """The newest requests that match every filter given, at most `limit`."""
    statement = select(debit_requests)
    if query.states:
        statement = statement.where(_c.status.in_(query.states))
    if query.account is not None:
        statement = statement.where(_c.account == query.account)
    if query.producer is not None:
        statement = statement.where(_c.producer == query.producer)
    if query.since is not None:
        statement = statement.where(_c.received_at >= query.since)
    statement = statement.order_by(_c.received_at.desc(), _c.request_id.desc()).limit(query.limit)
    with engine.connect() as conn:
        return [record_of(row) for row in conn.execute(statement).mappings()]
