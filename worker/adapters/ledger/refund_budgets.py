"""Refund budgets: what recoveries in flight or succeeded hold against each refund. The
conditional UPDATE of the refund's row is what makes over-recovery impossible under
concurrency; a recovery that fails gives its reservation back."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Connection, select, update

from worker.adapters.ledger.database import insert_ignoring_duplicates
from worker.adapters.ledger.statements import given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import refund_budgets
from worker.domain.types import RefundFacts

_b = refund_budgets.c


class RecoveryBudgetExceeded(Exception):
    def __init__(self, refunded: int, reserved: int) -> None:
        super().__init__(f"refunded {refunded}, already recovered or in flight {reserved}")
        self.refunded = refunded
        self.reserved = reserved


def reserve_recovery(conn: Connection, refund: RefundFacts, amount: int, now: datetime) -> None:
    """Inside the caller's transaction; raises RecoveryBudgetExceeded (it then rolls back)."""
    insert_ignoring_duplicates(
        conn,
        refund_budgets,
        {
            "refund_id": refund.refund_id,
            "currency": refund.currency,
            "refunded_amount": refund.amount,
            "reserved_amount": 0,
            "updated_at": now,
        },
    )
    reserved = conn.execute(
        update(refund_budgets)
        .where(_b.refund_id == refund.refund_id, _b.reserved_amount + amount <= refund.amount)
        .values(
            reserved_amount=_b.reserved_amount + amount,
            refunded_amount=refund.amount,
            updated_at=now,
        )
    ).rowcount
    if not reserved:
        current = conn.execute(
            select(_b.reserved_amount).where(_b.refund_id == refund.refund_id)
        ).scalar_one()
        raise RecoveryBudgetExceeded(refund.amount, current)


def give_back_recovery(conn: Connection, refund_id: str, amount: int, now: datetime) -> None:
    """The reservation made when a recovery's attempt began, given back when it failed."""
    conn.execute(
        update(refund_budgets)
        .where(_b.refund_id == refund_id)
        .values(reserved_amount=_b.reserved_amount - amount, updated_at=now)
    )


_RESERVED = select(_b.reserved_amount).where(_b.refund_id == given("refund_id", _b.refund_id))


class RefundBudgets(Store):
    def reserved_for_refund(self, refund_id: str) -> int:
        found = self._run.one(_RESERVED, {"refund_id": refund_id})
        return 0 if found is None else int(found[0])
