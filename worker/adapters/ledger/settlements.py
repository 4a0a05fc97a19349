"""Settlements: how a request awaiting reconciliation was settled (by whom, how, on what
evidence), written in the same transaction as the outcome it settles. One per request: a
settled request is finished, and nothing is recorded over it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, literal, select

from worker.adapters.ledger.statements import Write, given
from worker.adapters.ledger.tables import Status, settlements

_s = settlements.c


@dataclass(frozen=True, slots=True)
class Settlement:
    request_id: str
    settled_at: datetime
    actor: str  # "reconciler", "operator:alice"
    outcome: Status  # succeeded or failed
    method: str  # "resent", "stripe_records", "operator"
    evidence: dict[str, Any]  # what was read, when, which ids


def settlement_entry(outcome: Status) -> Write:
    """An outcome transition's settlement row: of `request_id` at `now`, by the outcome's own
    audit actor (`owner`), with `method` and `evidence` (`settlement_params`)."""
    return Write(
        settlements,
        {
            "request_id": given("request_id", _s.request_id),
            "settled_at": given("now", _s.settled_at),
            "actor": given("owner", _s.actor),
            "outcome": literal(str(outcome), _s.outcome.type),
            "method": given("method", _s.method),
            "evidence": given("evidence", _s.evidence),
        },
    )


def settlement_params(evidence: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of `settlement_entry`. Raises ValueError, before anything is written,
    when the evidence does not say how the outcome was found."""
    method = evidence.get("method")
    if not isinstance(method, str) or not method:
        raise ValueError("a settlement's evidence must name its method (evidence['method'])")
    return {"method": method, "evidence": dict(evidence)}


def read_settlement(conn: Connection, request_id: str) -> Settlement | None:
    row = conn.execute(select(settlements).where(_s.request_id == request_id)).one_or_none()
    if row is None:
        return None
    return Settlement(
        request_id=row.request_id,
        settled_at=row.settled_at,
        actor=row.actor,
        outcome=Status(row.outcome),
        method=row.method,
        evidence=dict(row.evidence),
    )
