"""Claiming a debit request: the first claim writes it (with its "received" entry); a claim
of a request already there resumes it, finds it finished, busy or in conflict. A claim is a
short lease, renewed while the debit is in progress (worker/ops/lease_keeper.py)."""

from __future__ import annotations

from collections.abc import Collection
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Connection, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql

from schemas.commands import DebitRequested
from worker.adapters.ledger.audit import audit_entry
from worker.adapters.ledger.records import Claim, ClaimKind, RequestRecord, fresh_record, record_of
from worker.adapters.ledger.statements import Transition, given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import TERMINAL, Status, debit_requests

_c = debit_requests.c
_NEW_COLUMNS = (
    "request_id", "fingerprint", "account", "amount", "currency", "reason", "refund",
    "command", "status", "lease_owner", "lease_until", "received_at", "producer",
)  # fmt: skip
# A first claim: the row and its entry. A request already there writes nothing (no row back).
_RECEIVED = Transition(
    postgresql.insert(debit_requests)
    .values(
        {name: given(name, _c[name]) for name in _NEW_COLUMNS}
        | {"attempts": 0, "updated_at": given("received_at", _c.updated_at)}
    )
    .on_conflict_do_nothing()
    .returning(_c.request_id),
    (audit_entry("received"),),
)


class Claims(Store):
    def claim(
        self,
        command: DebitRequested,
        owner: str,
        lease_seconds: float,
        producer: str | None = None,
    ) -> Claim:
        """`producer`: the one whose signature was verified, stored with a new claim."""
        now = self._clock()
        row = {
            "request_id": command.request_id,
            "fingerprint": command.fingerprint(),
            "account": command.account,
            "amount": command.amount,
            "currency": command.currency,
            "reason": str(command.reason),
            "refund": command.refund,
            "command": command.model_dump(mode="json"),
            "status": str(Status.RECEIVED),
            "lease_owner": owner,
            "lease_until": now + timedelta(seconds=lease_seconds),
            "received_at": now,
            "producer": producer,
        }
        if self._run.one(_RECEIVED, {**row, "now": now, "owner": owner, "detail": {}}):
            return Claim(ClaimKind.NEW, fresh_record(row))
        with self._engine.begin() as conn:
            return _claim_seen(conn, row, now)

    def renew_leases(
        self, held: Collection[tuple[str, str]], lease_seconds: float
    ) -> set[tuple[str, str]]:
        """Extend each lease of `held` (request id, owner) that its owner still holds to now +
        `lease_seconds`, all in one statement; returns the pairs renewed. A lease no longer
        held (taken over, released, finished) is left alone. `updated_at` is not touched: it
        says when the request last changed (the reconciler reads it as its last attempt)."""
        if not held:
            return set()
        pairs = sorted(held)
        renew = (
            update(debit_requests)
            .where(
                # the primary key first, so that each pair is one index lookup
                _c.request_id.in_([request_id for request_id, _ in pairs]),
                tuple_(_c.request_id, _c.lease_owner).in_(pairs),
            )
            .values(lease_until=self._clock() + timedelta(seconds=lease_seconds))
            .returning(_c.request_id, _c.lease_owner)
        )
        with self._engine.begin() as conn:
            return {(str(row[0]), str(row[1])) for row in conn.execute(renew)}


def _claim_seen(conn: Connection, row: dict[str, Any], now: datetime) -> Claim:
    """A request already in the ledger (a redelivery, a retry, or another worker's)."""
    record = _get(conn, row["request_id"])
    if record.fingerprint != row["fingerprint"]:
        return Claim(ClaimKind.CONFLICT, record)
    if record.status in TERMINAL:
        return Claim(ClaimKind.FINISHED, record)
    owner = row["lease_owner"]
    taken = (
        conn.execute(
            update(debit_requests)
            .where(
                _c.request_id == row["request_id"],
                or_(_c.lease_until.is_(None), _c.lease_until < now, _c.lease_owner == owner),
            )
            .values(lease_owner=owner, lease_until=row["lease_until"], updated_at=now)
            .returning(*debit_requests.c)
        )
        .mappings()
        .one_or_none()
    )
    if taken is None:
        return Claim(ClaimKind.BUSY, record)
    return Claim(ClaimKind.RESUMED, record_of(taken))


def _get(conn: Connection, request_id: str) -> RequestRecord:
    row = conn.execute(select(debit_requests).where(_c.request_id == request_id)).mappings().one()
    return record_of(row)
