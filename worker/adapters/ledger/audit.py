"""The audit trail: one row per state change, written in the same transaction as the change."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, insert, literal, select

from worker.adapters.ledger.statements import Write, given
from worker.adapters.ledger.tables import audit_log


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    entity: str
    entity_id: str
    action: str
    actor: str
    detail: dict[str, Any]


def audit_entry(action: str) -> Write:
    """A transition's audit row: `action` at `now`, of `request_id`, by `owner`, with `detail`
    (JSON)."""
    a = audit_log.c
    return Write(
        audit_log,
        {
            "at": given("now", a.at),
            "entity": literal("request", a.entity.type),
            "entity_id": given("request_id", a.entity_id),
            "action": literal(action, a.action.type),
            "actor": given("owner", a.actor),
            "detail": given("detail", a.detail),
        },
    )


_INSERT = insert(audit_log)  # built once; the values come as parameters


def write_audit(
    conn: Connection,
    *,
    at: datetime,
    entity: str,
    entity_id: str,
    action: str,
    actor: str,
    detail: dict[str, Any] | None = None,
) -> None:
    conn.execute(
        _INSERT,
        {
            "at": at,
            "entity": entity,
            "entity_id": entity_id,
            "action": action,
            "actor": actor,
            "detail": detail or {},
        },
    )


def read_audit(conn: Connection, entity: str, entity_id: str) -> list[AuditEntry]:
    a = audit_log.c
    rows = conn.execute(
        select(a.at, a.entity, a.entity_id, a.action, a.actor, a.detail)
        .where(a.entity == entity, a.entity_id == entity_id)
        .order_by(a.id)
    )
    return [AuditEntry(*row) for row in rows]
