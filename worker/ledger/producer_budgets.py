"""Reserving a producer's rolling-day room, inside the transaction that moves a request to
``attempting``.

The UPDATE of the (producer, currency) row takes a row lock held until commit, so the sum
read after it sees every reservation committed by a concurrent worker: two workers can never
both fit into the same remaining room. A request reserves at most once (its request_id is
the reservation's key), and a failed request gives its reservation back.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, func, select, update

from worker.ledger.database import insert_ignoring_duplicates
from worker.ledger.tables import producer_budgets, producer_reservations
from worker.producer_limits import DailyLimit

WINDOW: Final = timedelta(days=1)


class ProducerLimitExceeded(Exception):
    def __init__(self, limit: DailyLimit, used: int) -> None:
        super().__init__(f"{limit.producer} used {used} of {limit.limit} {limit.currency}")
        self.limit = limit
        self.used = used


def reserve(
    conn: Connection, request_id: str, limit: DailyLimit, amount: int, now: datetime
) -> None:
    """Raises ProducerLimitExceeded (the caller's transaction then rolls back)."""
    insert_ignoring_duplicates(
        conn,
        producer_budgets,
        {"producer": limit.producer, "currency": limit.currency, "updated_at": now},
    )
    budget, held = producer_budgets.c, producer_reservations.c
    conn.execute(  # the lock: concurrent reservations of this producer wait here
        update(producer_budgets)
        .where(budget.producer == limit.producer, budget.currency == limit.currency)
        .values(updated_at=now)
    )
    already = conn.execute(select(held.request_id).where(held.request_id == request_id)).first()
    if already is not None:
        return
    used = int(
        conn.execute(
            select(func.coalesce(func.sum(held.amount), 0)).where(
                held.producer == limit.producer,
                held.currency == limit.currency,
                held.reserved_at > now - WINDOW,
                held.released_at.is_(None),
            )
        ).scalar_one()
    )
    if used + amount > limit.limit:
        raise ProducerLimitExceeded(limit, used)
    conn.execute(
        producer_reservations.insert().values(
            request_id=request_id,
            producer=limit.producer,
            currency=limit.currency,
            amount=amount,
            reserved_at=now,
        )
    )


def release(conn: Connection, request_id: str, now: datetime) -> None:
    """Give a failed request's reservation back (nothing happens if it had none)."""
    conn.execute(
        update(producer_reservations)
        .where(
            producer_reservations.c.request_id == request_id,
            producer_reservations.c.released_at.is_(None),
        )
        .values(released_at=now)
    )
