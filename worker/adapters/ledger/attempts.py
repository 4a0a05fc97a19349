"""Attempts at Stripe: the decision to attempt (received → attempting, with its key, its
reservations and its entry), each later attempt counted, and a lease given up early."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, func, or_, update
from sqlalchemy.exc import NoResultFound

from worker.adapters.ledger.audit import audit_entry
from worker.adapters.ledger.producer_budgets import reserve
from worker.adapters.ledger.refund_budgets import reserve_recovery
from worker.adapters.ledger.statements import Transition, given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import Status, debit_requests
from worker.domain.types import DailyLimit, RefundFacts

_c = debit_requests.c
_request = _c.request_id == given("request_id", _c.request_id)
_now = given("now", _c.updated_at)

# An escalated request that never reached Stripe has no key yet, and may still be attempted.
# RETURNING amount (for the reservations) and the attempt counted.
_BEGIN = Transition(
    update(debit_requests)
    .where(
        _request,
        or_(_c.status == str(Status.RECEIVED), _c.status == str(Status.NEEDS_RECONCILIATION)),
        _c.idempotency_key.is_(None),
        _c.lease_owner == given("owner", _c.lease_owner),
    )
    .values(
        status=str(Status.ATTEMPTING),
        idempotency_key=given("key", _c.idempotency_key),
        updated_at=_now,
        attempts=_c.attempts + 1,
        first_attempt_at=func.coalesce(_c.first_attempt_at, _now),
    )
    .returning(_c.amount, _c.attempts),
    (audit_entry(str(Status.ATTEMPTING)),),
)
_COUNT = (
    update(debit_requests)
    .where(_request)
    .values(
        attempts=_c.attempts + 1,
        updated_at=_now,
        first_attempt_at=func.coalesce(_c.first_attempt_at, _now),
    )
    .returning(_c.attempts)
)
_RELEASE = (
    update(debit_requests)
    .where(_request, _c.lease_owner == given("owner", _c.lease_owner))
    .values(lease_owner=None, lease_until=None)
)


class Attempts(Store):
    def begin_attempt(
        self,
        request_id: str,
        owner: str,
        idempotency_key: str,
        refund: RefundFacts | None,
        daily: DailyLimit | None = None,
    ) -> int | None:
        """received (or escalated before any attempt) → attempting, reserving the recovery
        and the producer's daily room in the same transaction, and counting the first Stripe
        attempt (its time starts the key's 24 h). Returns that attempt's number (the caller
        does not count it again), or None when the request is no longer ours. Raises
        RecoveryBudgetExceeded or ProducerLimitExceeded when the room is gone."""
        now = self._clock()
        params = {
            "request_id": request_id,
            "owner": owner,
            "key": idempotency_key,
            "now": now,
            "detail": {"idempotency_key": idempotency_key},
        }
        if refund is None and daily is None:  # nothing to reserve: the transition alone
            moved = self._run.one(_BEGIN, params)
        else:
            with self._engine.begin() as conn:

                def reserved(row: Row[Any]) -> None:  # raises: the transaction rolls back
                    if refund is not None:
                        reserve_recovery(conn, refund, int(row.amount), now)
                    if daily is not None:
                        reserve(conn, request_id, daily, int(row.amount), now)

                moved = _BEGIN.in_transaction(conn, params, reserved)
        return None if moved is None else int(moved[1])

    def count_attempt(self, request_id: str) -> int:
        """Count a Stripe attempt about to start; the first one starts the key's 24 h.
        (begin_attempt counts the first attempt of a request itself.)"""
        counted = self._run.one(_COUNT, {"request_id": request_id, "now": self._clock()})
        if counted is None:
            raise NoResultFound(f"no request {request_id} in the ledger")
        return int(counted[0])

    def release(self, request_id: str, owner: str) -> None:
        """Give up the lease early (e.g. before a delayed retry) so others need not wait."""
        self._run.one(_RELEASE, {"request_id": request_id, "owner": owner})
