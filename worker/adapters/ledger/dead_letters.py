"""Dead letters kept in the ledger: what the keeper moved out of `debits.dead-letter`, and how
an operator resolved each (replayed or discarded, audited in the same transaction).

Keeping is idempotent on the dedupe key, so a message the keeper stored but could not
acknowledge (it crashed, the broker went away) is stored once however often it comes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Final

from sqlalchemy import or_, select, update

from worker.adapters.ledger.audit import write_audit
from worker.adapters.ledger.database import insert_ignoring_duplicates
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import dead_letters, debit_requests

PENDING: Final = "pending"
REPLAYED: Final = "replayed"
DISCARDED: Final = "discarded"
STATES: Final = (PENDING, REPLAYED, DISCARDED)
AUDIT_ENTITY: Final = "dead_letter"

_d = dead_letters.c


@dataclass(frozen=True, slots=True)
class NewDeadLetter:
    """A message taken from the dead-letter queue, as it is kept."""

    dedupe_key: str
    dead_lettered_at: datetime
    request_id: str | None
    producer: str | None
    stage: str  # "intake" | "task" | "broker"
    reason: str
    routing_key: str
    content_type: str | None
    body: bytes
    headers: dict[str, Any]  # JSON-safe


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A kept dead letter (fields named as the table's columns)."""

    id: int
    dedupe_key: str
    dead_lettered_at: datetime
    kept_at: datetime
    request_id: str | None
    producer: str | None
    stage: str
    reason: str
    routing_key: str
    content_type: str | None
    body: bytes
    headers: dict[str, Any]
    state: str  # one of STATES
    resolved_at: datetime | None
    resolved_by: str | None
    resolution: str | None


_COLUMNS = tuple(_d[f.name] for f in fields(DeadLetter))


class DeadLetterStore(Store):
    def check(self) -> None:
        """Raises unless the ledger answers and holds the table (reachable and migrated)."""
        with self._engine.connect() as conn:
            conn.execute(select(_d.id).limit(1)).all()

    def keep(self, letter: NewDeadLetter) -> bool:
        """Stored, committed; False: one with its dedupe key was stored before (nothing is
        written)."""
        values = {f.name: getattr(letter, f.name) for f in fields(NewDeadLetter)}
        values |= {"kept_at": self._clock(), "state": PENDING}
        with self._engine.begin() as conn:
            return insert_ignoring_duplicates(conn, dead_letters, values)

    def producer_of(self, request_id: str) -> str | None:
        """The producer the ledger recorded for the request (None: not claimed, or none)."""
        r = debit_requests.c
        with self._engine.connect() as conn:
            found = conn.execute(select(r.producer).where(r.request_id == request_id)).first()
        return None if found is None else found.producer

    def listed(
        self, *, state: str | None = PENDING, request_id: str | None = None, limit: int = 20
    ) -> list[DeadLetter]:
        """Oldest first; `state` None: every state."""
        statement = select(*_COLUMNS).order_by(_d.id).limit(limit)
        if state is not None:
            statement = statement.where(_d.state == state)
        if request_id is not None:
            statement = statement.where(_d.request_id == request_id)
        return self._read(statement)

    def pending(
        self, *, ids: Sequence[int] = (), request_ids: Sequence[str] = (), limit: int = 1
    ) -> list[DeadLetter]:
        """The pending dead letters with these ids or request ids (all of them), or else the
        `limit` oldest."""
        statement = select(*_COLUMNS).where(_d.state == PENDING).order_by(_d.id)
        if ids or request_ids:
            statement = statement.where(or_(_d.id.in_(ids), _d.request_id.in_(request_ids)))
        else:
            statement = statement.limit(limit)
        return self._read(statement)

    def mark_replayed(self, letter_id: int, by: str) -> bool:
        """False: it was not pending (another operator resolved it first)."""
        return self._resolve(letter_id, REPLAYED, by, "replayed", "dead_letter_replayed")

    def discard(self, letter_id: int, by: str, reason: str) -> bool:
        """False: it was not pending."""
        return self._resolve(letter_id, DISCARDED, by, reason, "dead_letter_discarded")

    def _resolve(self, letter_id: int, state: str, by: str, resolution: str, action: str) -> bool:
        now, actor = self._clock(), f"operator:{by}"
        with self._engine.begin() as conn:
            done = conn.execute(
                update(dead_letters)
                .where(_d.id == letter_id, _d.state == PENDING)
                .values(state=state, resolved_at=now, resolved_by=actor, resolution=resolution)
                .returning(_d.request_id)
            ).first()
            if done is None:
                return False
            write_audit(
                conn,
                at=now,
                entity=AUDIT_ENTITY,
                entity_id=str(letter_id),
                action=action,
                actor=actor,
                detail={"reason": resolution, "request_id": done.request_id},
            )
        return True

    def _read(self, statement: Any) -> list[DeadLetter]:
        with self._engine.connect() as conn:
            return [DeadLetter(*row) for row in conn.execute(statement)]
