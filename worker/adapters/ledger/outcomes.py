"""Outcomes: a request succeeded or failed (with its event in the outbox and its entry), or
is handed to an operator. Nothing is ever recorded over a finished request."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from sqlalchemy import Row, and_, or_, select, update

from worker.adapters.ledger.audit import audit_entry
from worker.adapters.ledger.outbox_store import event_params, event_row_id, outbox_entry
from worker.adapters.ledger.producer_budgets import release
from worker.adapters.ledger.records import Success
from worker.adapters.ledger.refund_budgets import give_back_recovery
from worker.adapters.ledger.settlements import settlement_entry, settlement_params
from worker.adapters.ledger.statements import Transition, Write, given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import TERMINAL, Status, debit_requests
from worker.domain.types import OutboxEvent

_c = debit_requests.c
_request = _c.request_id == given("request_id", _c.request_id)
_now = given("now", _c.updated_at)
_OUTCOME_COLUMNS = {
    Status.SUCCEEDED: ("payment_id", "transfer_id", "balance_transaction", "charged_at"),
    Status.FAILED: ("failure_code", "failure_message", "stripe_error"),
}


def _finish(status: Status, *writes: Write, unattempted: bool = False) -> Transition:
    """RETURNING only columns the UPDATE leaves alone (what the row held: whether a
    reservation was made, and of what), then the event's outbox row id. `unattempted`: only
    while no Stripe attempt has begun (no key yet)."""
    guards = [_c.status != str(s) for s in TERMINAL]
    if unattempted:
        guards.append(_c.idempotency_key.is_(None))
    return Transition(
        update(debit_requests)
        .where(_request, and_(*guards))
        .values(
            status=str(status),
            finished_at=_now,
            updated_at=_now,
            lease_owner=None,
            lease_until=None,
            **{name: given(name, _c[name]) for name in _OUTCOME_COLUMNS[status]},
        )
        .returning(_c.idempotency_key, _c.refund, _c.amount),
        (outbox_entry(), audit_entry(str(status)), *writes),
    )


_FINISH = {status: _finish(status) for status in _OUTCOME_COLUMNS}
# A refusal decided before any Stripe call: it must not land on a request whose attempt
# another worker began meanwhile (having taken over a lease this one lost).
_REFUSE = _finish(Status.FAILED, unattempted=True)
# The same, settling a request awaiting reconciliation: its settlement row is written too.
_SETTLE = {status: _finish(status, settlement_entry(status)) for status in _OUTCOME_COLUMNS}
_ESCALATE = Transition(
    update(debit_requests)
    .where(
        _request,
        or_(_c.status == str(Status.RECEIVED), _c.status == str(Status.ATTEMPTING)),
    )
    .values(
        status=str(Status.NEEDS_RECONCILIATION),
        updated_at=_now,
        lease_owner=None,
        lease_until=None,
    )
    .returning(_c.request_id),
    (audit_entry(str(Status.NEEDS_RECONCILIATION)),),
)


class Outcomes(Store):
    """Outcomes recorded with `evidence` (a JSON-able mapping naming its "method") settle the
    request: the audit entry carries the evidence, and a settlement row (settlements.py) is
    written in the same transaction. Their audit entry and settlement name `actor` (e.g.
    "reconciler", "operator:alice"); without it, the entry names `owner` as always."""

    def record_succeeded(
        self,
        request_id: str,
        owner: str,
        success: Success,
        event: OutboxEvent,
        *,
        evidence: Mapping[str, Any] | None = None,
        actor: str | None = None,
    ) -> int | None:
        """The outbox row id of the recorded event; None if the request was already finished.
        A success gives nothing back, so its transition runs alone (unless it settles)."""
        values = {
            "payment_id": success.payment_id,
            "transfer_id": success.transfer_id,
            "balance_transaction": success.balance_transaction,
            "charged_at": success.charged_at,
        }
        params = self._outcome(request_id, owner, event, values, evidence=evidence, actor=actor)
        if evidence is None:
            moved = self._run.one(_FINISH[Status.SUCCEEDED], params)
        else:
            with self._engine.begin() as conn:
                moved = _SETTLE[Status.SUCCEEDED].in_transaction(conn, params)
        if moved is None:
            return None
        if moved[3] is None:  # the event was already in the outbox: the row holding it
            with self._single.connect() as conn:
                return event_row_id(conn, event.event_id)
        return int(moved[3])

    def record_failed(
        self,
        request_id: str,
        owner: str,
        *,
        code: str,
        message: str,
        stripe_error: dict[str, Any] | None,
        event: OutboxEvent,
        evidence: Mapping[str, Any] | None = None,
        actor: str | None = None,
        unattempted: bool = False,
        at: datetime | None = None,
    ) -> int | None:
        """The outbox row id of the recorded event; None if the request was already finished
        (or, `unattempted`: a refusal made before any Stripe call, if an attempt has begun
        since). What the attempt reserved is given back in the same transaction. `at`: the
        event's `failed_at`, recorded as `finished_at`, from which the event is built again
        once the retention has removed it from the outbox (default: now)."""
        values = {"failure_code": code, "failure_message": message, "stripe_error": stripe_error}
        params = self._outcome(request_id, owner, event, values, evidence=evidence, actor=actor)
        if at is not None:
            params["now"] = at
        now = params["now"]
        if unattempted and evidence is None:
            finish = _REFUSE
        else:
            finish = (_FINISH if evidence is None else _SETTLE)[Status.FAILED]
        with self._engine.begin() as conn:

            def given_back(row: Row[Any]) -> None:
                # Reservations exist exactly when begin_attempt set the key; a request
                # escalated before any attempt has none to give back.
                if row.idempotency_key is None:
                    return
                if row.refund:
                    give_back_recovery(conn, row.refund, int(row.amount), now)
                release(conn, request_id, now)  # the producer's daily room

            moved = finish.in_transaction(conn, params, given_back)
            if moved is None:
                return None
            return int(moved[3]) if moved[3] is not None else event_row_id(conn, event.event_id)

    def _outcome(
        self,
        request_id: str,
        owner: str,
        event: OutboxEvent,
        values: dict[str, Any],
        *,
        evidence: Mapping[str, Any] | None,
        actor: str | None,
    ) -> dict[str, Any]:
        """The transition's parameters; `owner` is the audit entry's actor (and the
        settlement's), replaced by `actor` when one is given."""
        detail = {k: _json(v) for k, v in values.items() if v is not None}
        params = {
            "request_id": request_id,
            "owner": owner if actor is None else actor,
            "now": self._clock(),
            **values,
            **event_params(event),
            "detail": detail,
        }
        if evidence is not None:
            params.update(settlement_params(evidence))
            detail["evidence"] = params["evidence"]
        return params

    def mark_needs_reconciliation(self, request_id: str, owner: str, why: str) -> bool:
        """Hand an unfinished request to an operator. A `received` one never reached Stripe
        (the audit entry says so); an `attempting` one may have moved money."""
        with self._engine.begin() as conn:
            before = conn.execute(select(_c.status).where(_c.request_id == request_id)).scalar()
            detail = {"why": why, "stripe_called": before == Status.ATTEMPTING}
            params = {"request_id": request_id, "owner": owner, "now": self._clock()}
            moved = _ESCALATE.in_transaction(conn, {**params, "detail": detail})
        return moved is not None


def _json(value: Any) -> Any:
    """An audit detail's value as JSON holds it (a datetime as ISO 8601)."""
    return value.isoformat() if isinstance(value, datetime) else value
