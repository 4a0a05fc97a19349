"""Removing the ledger's transient rows in small batches, one short transaction each: sent
outbox events, and producers' daily reservations past their day. Nothing else is removed:
requests, audit entries, settlements, refund budgets and proofs stay.

A batch takes the oldest rows past the cut-off that no one holds (on PostgreSQL: FOR UPDATE
SKIP LOCKED), so it never waits for, nor holds up, a worker: the hot path writes new rows
and marks unsent ones sent, and a sent row past the cut-off is read only by `status` and a
redelivery, neither of which takes a lock on it."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, Engine, bindparam, delete, func, select
from sqlalchemy.exc import DBAPIError

from worker.adapters.ledger.producer_budgets import WINDOW
from worker.adapters.ledger.tables import outbox, producer_budgets, producer_reservations

# pg_try_advisory_lock's key: one retention at a time, of all processes on all hosts.
LOCK_KEY: Final = 0x64656269745F7274  # "debit_rt"

_o, _r = outbox.c, producer_reservations.c
# ix_outbox_unsent (sent_at, id) finds them, in its order: without the ORDER BY, a batch
# with many rows past the cut-off was planned as a sequential scan from the table's start,
# which reads the space earlier batches emptied again each time. An unsent row (sent_at
# NULL) never matches.
_SENT_BEFORE = delete(outbox).where(
    _o.id.in_(
        select(_o.id)
        .where(_o.sent_at < bindparam("cutoff", type_=_o.sent_at.type))
        .order_by(_o.sent_at)  # the oldest first, read in the index's order
        .limit(bindparam("batch"))
        .with_for_update(skip_locked=True)  # SQLite renders none, and needs none
        .scalar_subquery()
    )
)
# One producer and currency at a time: ix_producer_reservations_window (producer, currency,
# reserved_at) finds them.
_RESERVED_BEFORE = delete(producer_reservations).where(
    _r.request_id.in_(
        select(_r.request_id)
        .where(
            _r.producer == bindparam("producer"),
            _r.currency == bindparam("currency"),
            _r.reserved_at < bindparam("cutoff", type_=_r.reserved_at.type),
        )
        .order_by(_r.reserved_at)
        .limit(bindparam("batch"))
        .with_for_update(skip_locked=True)
        .scalar_subquery()
    )
)


class RetentionStore:
    """The batches of one retention round, on the one connection `turn` holds."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @contextmanager
    def turn(self) -> Iterator[Connection | None]:
        """A connection holding this round's turn, or None while another process has it. On
        PostgreSQL the turn is a session advisory lock (released at the end, or by the
        server if the connection dies); SQLite serves one process and takes none."""
        with self._engine.connect() as conn:
            if conn.dialect.name != "postgresql":
                yield conn
                return
            got = conn.execute(select(func.pg_try_advisory_lock(LOCK_KEY))).scalar_one()
            conn.commit()
            if not got:
                yield None
                return
            try:
                yield conn
            finally:
                # A connection that died took its lock with it: nothing left to release.
                with suppress(DBAPIError):
                    conn.execute(select(func.pg_advisory_unlock(LOCK_KEY)))
                    conn.commit()

    @staticmethod
    def remove_sent_events(conn: Connection, before: datetime, batch: int) -> int:
        """One batch of sent events sent before `before`; how many were removed."""
        with conn.begin():
            return conn.execute(_SENT_BEFORE, {"cutoff": before, "batch": batch}).rowcount

    @staticmethod
    def reservation_windows(conn: Connection) -> list[tuple[str, str]]:
        """Every (producer, currency) that has reserved (its lock row in producer_budgets)."""
        b = producer_budgets.c
        with conn.begin():
            rows = conn.execute(select(b.producer, b.currency).order_by(b.producer, b.currency))
            return [(str(producer), str(currency)) for producer, currency in rows]

    @staticmethod
    def remove_reservations(
        conn: Connection, window: tuple[str, str], before: datetime, batch: int
    ) -> int:
        """One batch of `window`'s reservations made before `before`, which must lie a day
        (WINDOW) or more in the past: those count in no limit any more."""
        producer, currency = window
        params = {"producer": producer, "currency": currency, "cutoff": before, "batch": batch}
        with conn.begin():
            return conn.execute(_RESERVED_BEFORE, params).rowcount


def reservation_cutoff(now: datetime, retention: float) -> datetime:
    """Reservations are kept `retention` seconds, and at least the day they count in."""
    return now - max(WINDOW, timedelta(seconds=retention))
