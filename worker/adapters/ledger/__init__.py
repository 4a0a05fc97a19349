"""The durable record of every debit request, its outcome, its events, and consents."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine

from worker.adapters.ledger.audit import AuditEntry, read_audit
from worker.adapters.ledger.consents import ConsentStore
from worker.adapters.ledger.outbox_store import OutboxStore, PendingEvent
from worker.adapters.ledger.producer_budgets import ProducerLimitExceeded
from worker.adapters.ledger.requests import (
    Claim,
    ClaimKind,
    RecoveryBudgetExceeded,
    RequestLedger,
    RequestRecord,
    Success,
)
from worker.adapters.ledger.tables import Status


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True)
class Ledger:
    engine: Engine
    requests: RequestLedger
    outbox: OutboxStore
    consents: ConsentStore

    @classmethod
    def on(cls, engine: Engine, clock: Callable[[], datetime] = utc_now) -> Ledger:
        return cls(
            engine=engine,
            requests=RequestLedger(engine, clock),
            outbox=OutboxStore(engine, clock),
            consents=ConsentStore(engine, clock),
        )

    def history(self, entity: str, entity_id: str) -> list[AuditEntry]:
        with self.engine.connect() as conn:
            return read_audit(conn, entity, entity_id)


__all__ = [
    "AuditEntry",
    "Claim",
    "ClaimKind",
    "ConsentStore",
    "Ledger",
    "OutboxStore",
    "PendingEvent",
    "ProducerLimitExceeded",
    "RecoveryBudgetExceeded",
    "RequestLedger",
    "RequestRecord",
    "Status",
    "Success",
    "utc_now",
]
