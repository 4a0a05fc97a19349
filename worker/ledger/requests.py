"""Debit requests in the ledger: claiming, the decision to attempt, and the final outcome.

Every transition is one transaction guarded by a conditional UPDATE, so redeliveries and
concurrent workers can never move a request backwards or record two outcomes. On PostgreSQL
the transitions of an ordinary debit (first claim, start of an attempt that reserves
nothing, success) are each one statement (data-modifying CTEs), which is its own transaction
without the BEGIN and COMMIT round trips, run on psycopg directly (pg_direct.py).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Any

from sqlalchemy import Connection, Engine, bindparam, func, or_, select, update

from schemas.commands import DebitRequested
from worker.facts import RefundFacts
from worker.ledger.audit import write_audit
from worker.ledger.database import insert_ignoring_duplicates, single_statements
from worker.ledger.outbox_store import OutboxEvent, event_row_id, event_values, record_event
from worker.ledger.pg_direct import applies_to, run_alone
from worker.ledger.producer_budgets import release, reserve
from worker.ledger.tables import TERMINAL, Status, debit_requests, refund_budgets
from worker.producer_limits import DailyLimit


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    fingerprint: str
    command: dict[str, Any]
    status: Status
    attempts: int
    idempotency_key: str | None
    payment_id: str | None
    failure_code: str | None
    failure_message: str | None
    received_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    first_attempt_at: datetime | None = None
    producer: str | None = None  # verified when claimed; None: claimed unsigned


def _record(row: Any) -> RequestRecord:
    return RequestRecord(
        request_id=row["request_id"],
        fingerprint=row["fingerprint"],
        command=dict(row["command"]),
        status=Status(row["status"]),
        attempts=row["attempts"],
        idempotency_key=row["idempotency_key"],
        payment_id=row["payment_id"],
        failure_code=row["failure_code"],
        failure_message=row["failure_message"],
        received_at=row["received_at"],
        updated_at=row["updated_at"],
        finished_at=row["finished_at"],
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"],
        first_attempt_at=row["first_attempt_at"],
        producer=row["producer"],
    )


def _fresh_record(row: dict[str, Any]) -> RequestRecord:
    """The row a first claim wrote, as reading it back would return it (in UTC)."""
    received_at = row["received_at"].astimezone(UTC)
    return RequestRecord(
        request_id=row["request_id"],
        fingerprint=row["fingerprint"],
        command=dict(row["command"]),
        status=Status.RECEIVED,
        attempts=0,
        idempotency_key=None,
        payment_id=None,
        failure_code=None,
        failure_message=None,
        received_at=received_at,
        updated_at=received_at,
        finished_at=None,
        lease_owner=row["lease_owner"],
        lease_until=row["lease_until"].astimezone(UTC),
        first_attempt_at=None,
        producer=row["producer"],
    )


class ClaimKind(StrEnum):
    NEW = "new"  # first sight: decide the policy
    RESUMED = "resumed"  # seen before, not finished: carry on from its status
    FINISHED = "finished"  # already has an outcome: re-emit it
    CONFLICT = "conflict"  # same request_id, other content
    BUSY = "busy"  # another worker holds the lease


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    record: RequestRecord


@dataclass(frozen=True, slots=True)
class Success:
    payment_id: str
    transfer_id: str | None
    balance_transaction: str | None


class RecoveryBudgetExceeded(Exception):
    def __init__(self, refunded: int, reserved: int) -> None:
        super().__init__(f"refunded {refunded}, already recovered or in flight {reserved}")
        self.refunded = refunded
        self.reserved = reserved


# The hot path's statements, built once (see database.py); parameters are named b_*.
_c = debit_requests.c
# An escalated request that never reached Stripe has no key yet, and may still be attempted.
_ATTEMPTABLE = (Status.RECEIVED, Status.NEEDS_RECONCILIATION)
_BEGIN_ATTEMPT = (
    update(debit_requests)
    .where(
        _c.request_id == bindparam("b_request_id"),
        _c.status.in_(_ATTEMPTABLE),
        _c.idempotency_key.is_(None),
        _c.lease_owner == bindparam("b_owner"),
    )
    .values(
        status=Status.ATTEMPTING,
        idempotency_key=bindparam("b_key"),
        updated_at=bindparam("b_now"),
        attempts=_c.attempts + 1,
        first_attempt_at=func.coalesce(_c.first_attempt_at, bindparam("b_now")),
    )
    .returning(_c.amount, _c.attempts)
)
_OUTCOME_COLUMNS = {
    Status.SUCCEEDED: ("payment_id", "transfer_id", "balance_transaction"),
    Status.FAILED: ("failure_code", "failure_message", "stripe_error"),
}
_FINISH = {
    status: update(debit_requests)
    .where(
        _c.request_id == bindparam("b_request_id"),
        _c.status.not_in([s.value for s in TERMINAL]),
    )
    .values(
        status=bindparam("b_status"),
        finished_at=bindparam("b_now"),
        updated_at=bindparam("b_now"),
        lease_owner=None,
        lease_until=None,
        **{name: bindparam(f"b_{name}", type_=_c[name].type) for name in columns},
    )
    # RETURNING only columns this UPDATE leaves alone: they are what the row held.
    .returning(_c.idempotency_key, _c.refund, _c.amount)
    for status, columns in _OUTCOME_COLUMNS.items()
}

# PostgreSQL only, run on psycopg directly (pg_direct.py): the transitions of an ordinary
# debit, each one statement of its own (data-modifying CTEs) that writes the change and its
# audit entry together or not at all, exactly as the transactions below do on any database.

# A first claim: the row and its "received" entry. A request seen before writes nothing here
# (the count is 0) and is claimed by the transaction in RequestLedger.claim.
_RECEIVED_AT_ONCE = """
    WITH fresh AS (
        INSERT INTO debit_requests (request_id, fingerprint, account, amount, currency, reason,
                                    refund, command, status, attempts, lease_owner,
                                    lease_until, received_at, updated_at, producer)
        VALUES (%(request_id)s, %(fingerprint)s, %(account)s, %(amount)s, %(currency)s,
                %(reason)s, %(refund)s, %(command)s::json, %(status)s, 0, %(lease_owner)s,
                %(lease_until)s, %(received_at)s, %(received_at)s, %(producer)s)
        ON CONFLICT DO NOTHING
        RETURNING request_id
    ),
    audit AS (
        INSERT INTO audit_log (at, entity, entity_id, action, actor, detail)
        SELECT %(received_at)s, 'request', request_id, %(status)s, %(lease_owner)s, '{}'::json
        FROM fresh
    )
    SELECT count(*) FROM fresh
"""

# The start of an attempt that reserves nothing (no refund to recover, no producer daily
# maximum): _BEGIN_ATTEMPT and its entry. No row: the request is not ours to move.
_ATTEMPTING_AT_ONCE = """
    WITH moved AS (
        UPDATE debit_requests
        SET status = %(status)s, idempotency_key = %(key)s, updated_at = %(now)s,
            attempts = attempts + 1, first_attempt_at = coalesce(first_attempt_at, %(now)s)
        WHERE request_id = %(request_id)s
          AND status = ANY(%(attemptable)s)
          AND idempotency_key IS NULL
          AND lease_owner = %(owner)s
        RETURNING request_id, attempts
    ),
    audit AS (
        INSERT INTO audit_log (at, entity, entity_id, action, actor, detail)
        SELECT %(now)s, 'request', request_id, %(status)s, %(owner)s, %(detail)s::json
        FROM moved
    )
    SELECT attempts FROM moved
"""

# A success: the outcome, its event in the outbox and the entry. An event already in the
# outbox (ids are deterministic) gives no row id; the caller reads it.
_SUCCEEDED_AT_ONCE = """
    WITH moved AS (
        UPDATE debit_requests
        SET status = %(status)s, finished_at = %(now)s, updated_at = %(now)s,
            lease_owner = NULL, lease_until = NULL,
            payment_id = %(payment_id)s, transfer_id = %(transfer_id)s,
            balance_transaction = %(balance_transaction)s
        WHERE request_id = %(request_id)s
          AND NOT (status = ANY(%(terminal)s))
        RETURNING request_id
    ),
    event AS (
        INSERT INTO outbox (event_id, request_id, event_type, routing_key, body, created_at,
                            publish_attempts)
        SELECT %(e_event_id)s, %(e_request_id)s, %(e_event_type)s, %(e_routing_key)s,
               %(e_body)s, %(now)s, 0
        FROM moved
        ON CONFLICT DO NOTHING
        RETURNING id
    ),
    audit AS (
        INSERT INTO audit_log (at, entity, entity_id, action, actor, detail)
        SELECT %(now)s, 'request', request_id, %(status)s, %(owner)s, %(detail)s::json
        FROM moved
    )
    SELECT (SELECT count(*) FROM moved), (SELECT id FROM event)
"""
_TERMINAL_VALUES = [str(status) for status in TERMINAL]
_ATTEMPTABLE_VALUES = [str(status) for status in _ATTEMPTABLE]


class RequestLedger:
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._single = single_statements(engine)
        self._direct = applies_to(engine)  # the hot path's statements on psycopg directly
        self._clock = clock

    def claim(
        self,
        command: DebitRequested,
        owner: str,
        lease_seconds: float,
        producer: str | None = None,
    ) -> Claim:
        """`producer`: the one whose signature was verified, stored with a new claim."""
        now = self._clock()
        lease_until = now + timedelta(seconds=lease_seconds)
        fingerprint = command.fingerprint()
        document = command.model_dump(mode="json")
        row = {
            "request_id": command.request_id,
            "fingerprint": fingerprint,
            "account": command.account,
            "amount": command.amount,
            "currency": command.currency,
            "reason": str(command.reason),
            "refund": command.refund,
            "command": document,
            "status": Status.RECEIVED,
            "lease_owner": owner,
            "lease_until": lease_until,
            "received_at": now,
            "producer": producer,
        }
        if self._direct:
            if self._received_at_once(row):
                return Claim(ClaimKind.NEW, _fresh_record(row))
            with self._engine.begin() as conn:
                return self._claim_seen(conn, row, now)
        with self._engine.begin() as conn:
            fresh = insert_ignoring_duplicates(
                conn, debit_requests, {**row, "attempts": 0, "updated_at": now}
            )
            if fresh:
                write_audit(
                    conn,
                    at=now,
                    entity="request",
                    entity_id=command.request_id,
                    action="received",
                    actor=owner,
                )
                return Claim(ClaimKind.NEW, _fresh_record(row))
            return self._claim_seen(conn, row, now)

    def _received_at_once(self, row: dict[str, Any]) -> bool:
        """The first claim on PostgreSQL: one round trip instead of four. False (nothing
        written) when the request is already in the ledger."""
        written = run_alone(
            self._engine,
            _RECEIVED_AT_ONCE,
            {**row, "status": str(row["status"]), "command": json.dumps(row["command"])},
        )
        return bool(written and written[0])

    @classmethod
    def _claim_seen(
        cls,
        conn: Connection,
        row: dict[str, Any],
        now: datetime,
    ) -> Claim:
        """A request already in the ledger (a redelivery, a retry, or another worker's)."""
        record = cls._get(conn, row["request_id"])
        if record.fingerprint != row["fingerprint"]:
            return Claim(ClaimKind.CONFLICT, record)
        if record.status in TERMINAL:
            return Claim(ClaimKind.FINISHED, record)
        owner = row["lease_owner"]
        taken = (
            conn.execute(
                update(debit_requests)
                .where(
                    debit_requests.c.request_id == row["request_id"],
                    or_(
                        debit_requests.c.lease_until.is_(None),
                        debit_requests.c.lease_until < now,
                        debit_requests.c.lease_owner == owner,
                    ),
                )
                .values(lease_owner=owner, lease_until=row["lease_until"], updated_at=now)
                .returning(*debit_requests.c)
            )
            .mappings()
            .one_or_none()
        )
        if taken is None:
            return Claim(ClaimKind.BUSY, record)
        return Claim(ClaimKind.RESUMED, _record(taken))

    def begin_attempt(
        self,
        request_id: str,
        owner: str,
        idempotency_key: str,
        refund: RefundFacts | None,
        daily: DailyLimit | None = None,
    ) -> int | None:
        """received (or escalated before any attempt) → attempting, reserving the recovery
        against its refund and the amount against the producer's daily room in the same
        transaction, and counting the first Stripe attempt (its time starts the key's 24 h).

        Returns the number of the attempt counted (the caller goes to Stripe at once, and
        does not count it again), or None when the request is no longer ours to move.

        Raises RecoveryBudgetExceeded when a concurrent recovery took the room first, and
        ProducerLimitExceeded when the producer's rolling day has no room left.
        """
        now = self._clock()
        if refund is None and daily is None and self._direct:
            return self._attempting_at_once(request_id, owner, idempotency_key, now)
        with self._engine.begin() as conn:
            moved = conn.execute(
                _BEGIN_ATTEMPT,
                {
                    "b_request_id": request_id,
                    "b_owner": owner,
                    "b_key": idempotency_key,
                    "b_now": now,
                },
            ).one_or_none()
            if moved is None:
                return None
            amount, attempt = int(moved.amount), int(moved.attempts)
            if refund is not None:
                self._reserve(conn, refund, amount, now)  # raises: the transaction rolls back
            if daily is not None:
                reserve(conn, request_id, daily, amount, now)  # raises: rolls back too
            write_audit(
                conn,
                at=now,
                entity="request",
                entity_id=request_id,
                action="attempting",
                actor=owner,
                detail={"idempotency_key": idempotency_key},
            )
            return attempt

    def _attempting_at_once(
        self, request_id: str, owner: str, idempotency_key: str, now: datetime
    ) -> int | None:
        """begin_attempt on PostgreSQL when nothing is reserved: one round trip instead of
        four."""
        moved = run_alone(
            self._engine,
            _ATTEMPTING_AT_ONCE,
            {
                "request_id": request_id,
                "status": str(Status.ATTEMPTING),
                "attemptable": _ATTEMPTABLE_VALUES,
                "owner": owner,
                "key": idempotency_key,
                "now": now,
                "detail": json.dumps({"idempotency_key": idempotency_key}),
            },
        )
        return None if moved is None else int(moved[0])

    def _reserve(self, conn: Connection, refund: RefundFacts, amount: int, now: datetime) -> None:
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
        budget = refund_budgets.c
        reserved = conn.execute(
            update(refund_budgets)
            .where(
                budget.refund_id == refund.refund_id,
                budget.reserved_amount + amount <= refund.amount,
            )
            .values(
                reserved_amount=budget.reserved_amount + amount,
                refunded_amount=refund.amount,
                updated_at=now,
            )
        ).rowcount
        if not reserved:
            current = conn.execute(
                select(budget.reserved_amount).where(budget.refund_id == refund.refund_id)
            ).scalar_one()
            raise RecoveryBudgetExceeded(refund.amount, current)

    def reserved_for_refund(self, refund_id: str) -> int:
        with self._single.connect() as conn:
            value = conn.execute(
                select(refund_budgets.c.reserved_amount).where(
                    refund_budgets.c.refund_id == refund_id
                )
            ).scalar_one_or_none()
        return int(value or 0)

    def count_attempt(self, request_id: str) -> int:
        """Count a Stripe attempt about to start; the first one starts the key's 24 h.
        (begin_attempt counts the first attempt of a request itself.)"""
        now = self._clock()
        with self._single.connect() as conn:
            return int(
                conn.execute(
                    update(debit_requests)
                    .where(debit_requests.c.request_id == request_id)
                    .values(
                        attempts=debit_requests.c.attempts + 1,
                        updated_at=now,
                        first_attempt_at=func.coalesce(debit_requests.c.first_attempt_at, now),
                    )
                    .returning(debit_requests.c.attempts)
                ).scalar_one()
            )

    def record_succeeded(
        self, request_id: str, owner: str, success: Success, event: OutboxEvent
    ) -> int | None:
        """The outbox row id of the recorded event; None if the request was already finished."""
        return self._finish(
            request_id,
            owner,
            Status.SUCCEEDED,
            event,
            {
                "payment_id": success.payment_id,
                "transfer_id": success.transfer_id,
                "balance_transaction": success.balance_transaction,
            },
        )

    def record_failed(
        self,
        request_id: str,
        owner: str,
        *,
        code: str,
        message: str,
        stripe_error: dict[str, Any] | None,
        event: OutboxEvent,
    ) -> int | None:
        """The outbox row id of the recorded event; None if the request was already finished."""
        return self._finish(
            request_id,
            owner,
            Status.FAILED,
            event,
            {"failure_code": code, "failure_message": message, "stripe_error": stripe_error},
        )

    def _finish(
        self,
        request_id: str,
        owner: str,
        status: Status,
        event: OutboxEvent,
        values: dict[str, Any],
    ) -> int | None:
        """Record the outcome and its event in one transaction; returns the event's outbox
        row id, or None (nothing written) if the request was already finished."""
        now = self._clock()
        detail = {k: v for k, v in values.items() if v is not None}
        if status is Status.SUCCEEDED and self._direct:
            return self._succeeded_at_once(request_id, owner, event, values, detail=detail, now=now)
        with self._engine.begin() as conn:
            moved = conn.execute(
                _FINISH[status],
                {
                    "b_request_id": request_id,
                    "b_status": str(status),
                    "b_now": now,
                    **{f"b_{name}": value for name, value in values.items()},
                },
            ).one_or_none()
            if moved is None:
                return None
            # Reservations exist exactly when begin_attempt set the key; a request escalated
            # before any attempt has none to give back.
            reserved = status is Status.FAILED and moved.idempotency_key is not None
            if reserved and moved.refund:
                # The reservation made when the attempt began is given back.
                conn.execute(
                    update(refund_budgets)
                    .where(refund_budgets.c.refund_id == moved.refund)
                    .values(
                        reserved_amount=refund_budgets.c.reserved_amount - moved.amount,
                        updated_at=now,
                    )
                )
            if reserved:
                release(conn, request_id, now)  # the producer's daily room, given back
            row_id = record_event(conn, event, now)
            write_audit(
                conn,
                at=now,
                entity="request",
                entity_id=request_id,
                action=str(status),
                actor=owner,
                detail=detail,
            )
            return row_id

    def _succeeded_at_once(
        self,
        request_id: str,
        owner: str,
        event: OutboxEvent,
        values: dict[str, Any],
        *,
        detail: dict[str, Any],
        now: datetime,
    ) -> int | None:
        """_finish for a success on PostgreSQL: one round trip instead of five. A success
        gives nothing back (no reservation is released), so the statement is the whole of
        what the transaction does."""
        moved, row_id = run_alone(
            self._engine,
            _SUCCEEDED_AT_ONCE,
            {
                "request_id": request_id,
                "status": str(Status.SUCCEEDED),
                "terminal": _TERMINAL_VALUES,
                "owner": owner,
                "now": now,
                **values,
                **{f"e_{name}": value for name, value in event_values(event).items()},
                "detail": json.dumps(detail),
            },
        ) or (0, None)
        if not moved:
            return None
        if row_id is None:  # the event was already in the outbox: the row holding it
            with self._single.connect() as conn:
                return event_row_id(conn, event.event_id)
        return int(row_id)

    def mark_needs_reconciliation(self, request_id: str, owner: str, why: str) -> bool:
        """Hand an unfinished request to an operator. A `received` one never reached Stripe
        (the audit entry says so); an `attempting` one may have moved money."""
        now = self._clock()
        with self._engine.begin() as conn:
            before = conn.execute(
                select(debit_requests.c.status).where(debit_requests.c.request_id == request_id)
            ).scalar_one_or_none()
            moved = conn.execute(
                update(debit_requests)
                .where(
                    debit_requests.c.request_id == request_id,
                    debit_requests.c.status.in_([Status.RECEIVED, Status.ATTEMPTING]),
                )
                .values(
                    status=Status.NEEDS_RECONCILIATION,
                    updated_at=now,
                    lease_owner=None,
                    lease_until=None,
                )
            ).rowcount
            if moved:
                write_audit(
                    conn,
                    at=now,
                    entity="request",
                    entity_id=request_id,
                    action=str(Status.NEEDS_RECONCILIATION),
                    actor=owner,
                    detail={"why": why, "stripe_called": before == Status.ATTEMPTING},
                )
            return bool(moved)

    def release(self, request_id: str, owner: str) -> None:
        """Give up the lease early (e.g. before a delayed retry) so others need not wait."""
        with self._single.connect() as conn:
            conn.execute(
                update(debit_requests)
                .where(
                    debit_requests.c.request_id == request_id,
                    debit_requests.c.lease_owner == owner,
                )
                .values(lease_owner=None, lease_until=None)
            )

    def get(self, request_id: str) -> RequestRecord | None:
        with self._single.connect() as conn:
            row = (
                conn.execute(
                    select(debit_requests).where(debit_requests.c.request_id == request_id)
                )
                .mappings()
                .one_or_none()
            )
        return None if row is None else _record(row)

    def count_by_status(self) -> dict[str, int]:
        with self._engine.connect() as conn:
            rows = conn.execute(
                select(debit_requests.c.status, func.count()).group_by(debit_requests.c.status)
            ).all()
        return {str(status): int(count) for status, count in rows}

    @staticmethod
    def _get(conn: Connection, request_id: str) -> RequestRecord:
        row = (
            conn.execute(select(debit_requests).where(debit_requests.c.request_id == request_id))
            .mappings()
            .one()
        )
        return _record(row)
