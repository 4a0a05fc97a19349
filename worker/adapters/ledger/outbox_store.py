"""The outbox: events recorded with the outcome they announce, published after commit.

A sent event is removed by the retention (worker/ops/retention.py) once it is old; the
outcome it announced stays in its request's row, from which handlers.outcome_event builds
the same event again when a finished request's command is redelivered."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, bindparam, func, literal, select, update

from worker.adapters.ledger.database import insert_ignoring_duplicates
from worker.adapters.ledger.statements import AnyOf, Write, given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import TERMINAL, debit_requests, outbox
from worker.domain.types import OutboxEvent


@dataclass(frozen=True, slots=True)
class PendingEvent:
    row_id: int
    event: OutboxEvent
    created_at: datetime
    sent: bool


@dataclass(frozen=True, slots=True)
class RecordedOutcome:
    """What a finished request's row holds of its outcome: everything its event says."""

    command: dict[str, Any]
    status: str  # "succeeded" | "failed"
    payment_id: str | None
    transfer_id: str | None
    balance_transaction: str | None
    charged_at: datetime | None
    failure_code: str | None
    failure_message: str | None
    stripe_error: dict[str, Any] | None
    finished_at: datetime


_r = debit_requests.c
_OUTCOME = select(
    _r.command,
    _r.status,
    _r.payment_id,
    _r.transfer_id,
    _r.balance_transaction,
    _r.charged_at,
    _r.failure_code,
    _r.failure_message,
    _r.stripe_error,
    _r.finished_at,
).where(_r.request_id == bindparam("request_id"))


def event_row_id(conn: Connection, event_id: str) -> int:
    """The outbox row that holds an event already there (event ids are deterministic)."""
    return int(conn.execute(select(outbox.c.id).where(outbox.c.event_id == event_id)).scalar_one())


_EVENT_COLUMNS = tuple(f.name for f in fields(OutboxEvent))  # named as outbox's columns


def _pending(row: dict[str, object]) -> PendingEvent:
    return PendingEvent(
        row_id=int(str(row["id"])),
        event=OutboxEvent(**{name: str(row[name]) for name in _EVENT_COLUMNS}),
        created_at=row["created_at"],  # type: ignore[arg-type]
        sent=row["sent_at"] is not None,
    )


# Run after publishes: one statement for a confirmed batch of any size.
_MARK_SENT = (
    update(outbox)
    .where(AnyOf(outbox.c.id, "ids"), outbox.c.sent_at.is_(None))
    .values(sent_at=given("now", outbox.c.sent_at), publish_attempts=outbox.c.publish_attempts + 1)
)


def outbox_entry() -> Write:
    """A transition's event, written once per event id (`event_params`); gives its row id,
    or None when the event was already there."""
    o = outbox.c
    return Write(
        outbox,
        {
            "event_id": given("event_id", o.event_id),
            "request_id": given("event_request_id", o.request_id),
            "event_type": given("event_type", o.event_type),
            "routing_key": given("routing_key", o.routing_key),
            "body": given("body", o.body),
            "created_at": given("now", o.created_at),
            "publish_attempts": literal(0, o.publish_attempts.type),
        },
        returning="id",
        ignore_duplicate=True,
    )


def event_params(event: OutboxEvent) -> dict[str, object]:
    """The parameters of `outbox_entry` for `event`."""
    return {
        "event_id": event.event_id,
        "event_request_id": event.request_id,
        "event_type": event.event_type,
        "routing_key": event.routing_key,
        "body": event.body,
    }


class OutboxStore(Store):
    def add(self, event: OutboxEvent) -> bool:
        row = {**asdict(event), "created_at": self._clock(), "publish_attempts": 0}
        with self._engine.begin() as conn:
            return insert_ignoring_duplicates(conn, outbox, row)

    def for_request(self, request_id: str) -> list[PendingEvent]:
        with self._single.connect() as conn:
            rows = conn.execute(
                select(outbox).where(outbox.c.request_id == request_id).order_by(outbox.c.id)
            ).mappings()
            return [_pending(dict(row)) for row in rows]

    def recorded_outcome(self, request_id: str) -> RecordedOutcome | None:
        """The outcome of a finished request (None: unknown or not finished)."""
        with self._single.connect() as conn:
            row = conn.execute(_OUTCOME, {"request_id": request_id}).mappings().one_or_none()
        if row is None or row["status"] not in TERMINAL or row["finished_at"] is None:
            return None
        return RecordedOutcome(**row)

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
        self._run.one(_MARK_SENT, {"ids": row_ids, "now": self._clock()})

    def count_unsent(self) -> int:
        with self._engine.connect() as conn:
            return int(
                conn.execute(
                    select(func.count()).select_from(outbox).where(outbox.c.sent_at.is_(None))
                ).scalar_one()
            )
