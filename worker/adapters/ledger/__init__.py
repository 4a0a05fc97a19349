"""The durable record of every debit request, its outcome, its events, and consents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from worker.adapters.ledger.audit import AuditEntry, read_audit
from worker.adapters.ledger.consents import ConsentStore
from worker.adapters.ledger.outbox_store import OutboxStore
from worker.adapters.ledger.producer_budgets import ProducerLimitExceeded
from worker.adapters.ledger.reconciliation import LedgerDebit, Reconciliation
from worker.adapters.ledger.reconciliation_runs import DifferenceRow, RunRecord
from worker.adapters.ledger.records import ClaimKind, Success
from worker.adapters.ledger.refund_budgets import RecoveryBudgetExceeded
from worker.adapters.ledger.requests import RequestLedger
from worker.adapters.ledger.settlements import Settlement
from worker.adapters.ledger.tables import Status


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ledger:
    engine: Engine
    requests: RequestLedger
    outbox: OutboxStore
    consents: ConsentStore
    reconciliation: Reconciliation

    @classmethod
    def on(cls, engine: Engine, clock: Callable[[], datetime] = utc_now) -> Ledger:
        return cls(
            engine=engine,
            requests=RequestLedger(engine, clock),
            outbox=OutboxStore(engine, clock),
            consents=ConsentStore(engine, clock),
            reconciliation=Reconciliation(engine, clock),
        )

    def history(self, entity: str, entity_id: str) -> list[AuditEntry]:
        with self.engine.connect() as conn:
            return read_audit(conn, entity, entity_id)


__all__ = [
    "ClaimKind",
    "DifferenceRow",
    "Ledger",
    "LedgerDebit",
    "ProducerLimitExceeded",
    "RecoveryBudgetExceeded",
    "RunRecord",
    "Settlement",
    "Status",
    "Success",
    "utc_now",
]
