"""Attempts at Stripe: the decision to attempt (received → attempting, with its key, its
reservations and its entry), each later attempt counted (with its entry), and a lease given
up early.

Both the decision and the count are the fence before money moves: each takes only while the
caller still holds an unexpired lease, so a process that lost its lease (stalled past it, and
taken over) never starts another Stripe call for the request.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Row, and_, func, or_, update

from worker.adapters.ledger.audit import audit_entry
from worker.adapters.ledger.producer_budgets import reserve
from worker.adapters.ledger.refund_budgets import reserve_recovery
from worker.adapters.ledger.statements import Transition, given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import TERMINAL, Status, debit_requests
from worker.domain.types import DailyLimit, RefundFacts

ATTEMPT_ACTION = "attempt"  # the audit action of each attempt after the first

_c = debit_requests.c
_request = _c.request_id == given("request_id", _c.request_id)
_now = given("now", _c.updated_at)
# The caller holds the lease, and it has not run out.
_leased = and_(_c.lease_owner == given("owner", _c.lease_owner), _c.lease_until > _now)

# An escalated request that never reached Stripe has no key yet, and may still be attempted.
# RETURNING amount (for the reservations) and the attempt counted.
_BEGIN = Transition(
    update(debit_requests)
    .where(
        _request,
        or_(_c.status == str(Status.RECEIVED), _c.status == str(Status.NEEDS_RECONCILIATION)),
        _c.idempotency_key.is_(None),
        _leased,
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
# A later attempt of an unfinished request; its entry names who made it (which process
# resumed a request, and when: the fault run measures take-overs by it).
_COUNT = Transition(
    update(debit_requests)
    .where(_request, _leased, *(_c.status != str(s) for s in sorted(TERMINAL)))
    .values(
        attempts=_c.attempts + 1,
        updated_at=_now,
        first_attempt_at=func.coalesce(_c.first_attempt_at, _now),
    )
    .returning(_c.attempts),
    (audit_entry(ATTEMPT_ACTION),),
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
        does not count it again), or None when the request is no longer ours (another holds
        its lease, or ours ran out). Raises
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

    def count_attempt(self, request_id: str, owner: str) -> int | None:
        """Count a Stripe attempt about to start, with its audit entry; the first one starts
        the key's 24 h. (begin_attempt counts the first attempt of a request itself.) Returns
        its number, or None when `owner` no longer holds an unexpired lease on the unfinished
        request: then it must not call Stripe."""
        params = {"request_id": request_id, "owner": owner, "now": self._clock()}
        counted = self._run.one(_COUNT, {**params, "detail": {}})
        return None if counted is None else int(counted[0])

    def release(self, request_id: str, owner: str) -> None:
        """Give up the lease early (e.g. before a delayed retry) so others need not wait."""
        self._run.one(_RELEASE, {"request_id": request_id, "owner": owner})
