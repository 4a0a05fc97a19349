"""The outbox: events recorded with the outcome they announce, published after commit."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import Connection, Engine, bindparam, func, select, update

from schemas.events import CloudEvent
from worker.ledger.database import (
    insert_ignoring_duplicates,
    insert_returning_id,
    single_statements,
)
from worker.ledger.pg_direct import applies_to, run_alone
from worker.ledger.tables import outbox


@dataclass(frozen=True, slots=True)
class OutboxEvent:
    event_id: str
    request_id: str
    event_type: str
    routing_key: str
    body: str

    @classmethod
    def of(cls, event: CloudEvent, routing_key: str) -> OutboxEvent:
        return cls(
            event_id=event.id,
            request_id=event.subject,
            event_type=event.type,
            routing_key=routing_key,
            body=event.model_dump_json(),
        )


@dataclass(frozen=True, slots=True)
class PendingEvent:
    row_id: int
    event: OutboxEvent
    created_at: datetime
    sent: bool


def event_values(event: OutboxEvent) -> dict[str, object]:
    """The event's own columns of its outbox row."""
    return {
        "event_id": event.event_id,
        "request_id": event.request_id,
        "event_type": event.event_type,
        "routing_key": event.routing_key,
        "body": event.body,
    }


def _row(event: OutboxEvent, now: datetime) -> dict[str, object]:
    return {**event_values(event), "created_at": now, "publish_attempts": 0}


def insert_event(conn: Connection, event: OutboxEvent, now: datetime) -> bool:
    return insert_ignoring_duplicates(conn, outbox, _row(event, now))


def record_event(conn: Connection, event: OutboxEvent, now: datetime) -> int:
    """Insert the event (once per event id) and return its outbox row id, so its writer can
    publish it and mark it sent without reading the outbox back."""
    row_id = insert_returning_id(conn, outbox, _row(event, now))
    if row_id is not None:
        return row_id
    return event_row_id(conn, event.event_id)


def event_row_id(conn: Connection, event_id: str) -> int:
    """The outbox row that holds an event already there (event ids are deterministic)."""
    return int(conn.execute(select(outbox.c.id).where(outbox.c.event_id == event_id)).scalar_one())


def _pending(row: dict[str, object]) -> PendingEvent:
    return PendingEvent(
        row_id=int(str(row["id"])),
        event=OutboxEvent(
            event_id=str(row["event_id"]),
            request_id=str(row["request_id"]),
            event_type=str(row["event_type"]),
            routing_key=str(row["routing_key"]),
            body=str(row["body"]),
        ),
        created_at=row["created_at"],  # type: ignore[arg-type]
        sent=row["sent_at"] is not None,
    )


# Run after publishes: built once, executed with parameters (see ledger/database.py).
_MARK_SENT = (
    update(outbox)
    .where(outbox.c.id.in_(bindparam("b_ids", expanding=True)), outbox.c.sent_at.is_(None))
    .values(
        sent_at=bindparam("b_now", type_=outbox.c.sent_at.type),
        publish_attempts=outbox.c.publish_attempts + 1,
    )
)


# The same on PostgreSQL, run on psycopg directly (pg_direct.py).
_MARK_SENT_ON_POSTGRESQL = """
    UPDATE outbox SET sent_at = %(now)s, publish_attempts = publish_attempts + 1
    WHERE id = ANY(%(ids)s) AND sent_at IS NULL
"""


class OutboxStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._single = single_statements(engine)
        self._direct = applies_to(engine)  # the hot path's statements on psycopg directly
        self._clock = clock

    def add(self, event: OutboxEvent) -> bool:
        with self._engine.begin() as conn:
            return insert_event(conn, event, self._clock())

    def for_request(self, request_id: str) -> list[PendingEvent]:
        with self._single.connect() as conn:
            rows = conn.execute(
                select(outbox).where(outbox.c.request_id == request_id).order_by(outbox.c.id)
            ).mappings()
            return [_pending(dict(row)) for row in rows]

    def unsent(self, *, older_than_seconds: float, limit: int) -> list[PendingEvent]:
        """Oldest first; rows younger than the threshold are left to their inline publish."""
        cutoff = self._clock() - timedelta(seconds=older_than_seconds)
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(outbox)
                .where(outbox.c.sent_at.is_(None), outbox.c.created_at <= cutoff)
                .order_by(outbox.c.id)
                .limit(limit)
            ).mappings()
            return [_pending(dict(row)) for row in rows]

    def mark_sent(self, row_id: int) -> None:
        self.mark_sent_many([row_id])

    def mark_sent_many(self, row_ids: list[int]) -> None:
        """One statement for any number of rows (a confirmed batch of event_pump.py)."""
        if self._direct:
            run_alone(
                self._engine, _MARK_SENT_ON_POSTGRESQL, {"ids": row_ids, "now": self._clock()}
            )
            return
        with self._single.connect() as conn:
            conn.execute(_MARK_SENT, {"b_ids": row_ids, "b_now": self._clock()})

    def count_unsent(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                ).scalar_one()
            )
