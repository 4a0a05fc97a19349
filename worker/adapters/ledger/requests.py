"""Debit requests in the ledger: claims, attempts, outcomes, refund budgets and reads.

Every transition is guarded (statements.py), so redeliveries and concurrent workers can never
move a request backwards or record two outcomes.
"""

from __future__ import annotations

from sqlalchemy import func, select

from worker.adapters.ledger.attempts import Attempts
from worker.adapters.ledger.claims import Claims
from worker.adapters.ledger.outcomes import Outcomes
from worker.adapters.ledger.records import RequestRecord, record_of
from worker.adapters.ledger.refund_budgets import RefundBudgets
from worker.adapters.ledger.tables import debit_requests

_c = debit_requests.c


class RequestLedger(Claims, Attempts, Outcomes, RefundBudgets):
    """Every store of a debit request's life, on one engine."""

    def get(self, request_id: str) -> RequestRecord | None:
        with self._single.connect() as conn:
            row = (
                conn.execute(select(debit_requests).where(_c.request_id == request_id))
                .mappings()
                .one_or_none()
            )
        return None if row is None else record_of(row)

    def count_by_status(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(select(_c.status, func.count()).group_by(_c.status)).all()
        return {str(status): int(count) for status, count in rows}
