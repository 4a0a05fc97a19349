"""Debit requests in the ledger: claims, attempts, outcomes, refund budgets and reads.

Every transition is guarded (a conditional UPDATE, or an INSERT that does nothing over a
request already there), so redeliveries and concurrent workers can never move a request
backwards or record two outcomes; each is one statement on PostgreSQL, or one transaction
(see statements.py).
"""

from __future__ import annotations

from worker.adapters.ledger.attempts import Attempts
from worker.adapters.ledger.claims import Claims
from worker.adapters.ledger.outcomes import Outcomes
from worker.adapters.ledger.records import Claim, ClaimKind, RequestRecord, Success
from worker.adapters.ledger.refund_budgets import RecoveryBudgetExceeded, RefundBudgets
from worker.adapters.ledger.request_reads import RequestReads


class RequestLedger(Claims, Attempts, Outcomes, RefundBudgets, RequestReads):
    """Every store of a debit request's life, on one engine."""


__all__ = [
    "Claim",
    "ClaimKind",
    "RecoveryBudgetExceeded",
    "RequestLedger",
    "RequestRecord",
    "Success",
]
