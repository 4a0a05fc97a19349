"""Reserving a producer's rolling-day room, inside the transaction that moves a request to
``attempting``. The upsert of the (producer, currency) row locks it until commit, so the sum
read after it sees every concurrent worker's committed reservation: two can never both fit
into the same room. A request reserves at most once (keyed by request_id); a failed request
gives its reservation back."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Final

from sqlalchemy import Connection, func, select, update

from worker.adapters.ledger.database import upsert
from worker.adapters.ledger.tables import producer_budgets, producer_reservations
from worker.domain.types import DailyLimit

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
    budget, held = producer_budgets.c, producer_reservations.c
    # The lock: concurrent reservations of this producer wait here.
    conn.execute(
        upsert(conn, producer_budgets)
        .values(producer=limit.producer, currency=limit.currency, updated_at=now)
        .on_conflict_do_update(
            index_elements=[budget.producer, budget.currency], set_={"updated_at": now}
        )
    )
    already = select(held.request_id).where(held.request_id == request_id).exists().label("already")
    used_sum = (
        select(func.coalesce(func.sum(held.amount), 0))
        .where(
            held.producer == limit.producer,
            held.currency == limit.currency,
            held.reserved_at > now - WINDOW,
            held.released_at.is_(None),
        )
        .scalar_subquery()
        .label("used")
    )
    found = conn.execute(select(already, used_sum)).one()
    if found.already:
        return
    used = int(found.used)
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
