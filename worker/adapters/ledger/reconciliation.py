"""The reconciler's ledger: requests awaiting reconciliation and its leases on them, their
settlements and audit entries, the ledger's side of a day, and the runs that prove a day
(reconciliation_runs.py). Outcomes themselves, settled or not, are recorded by outcomes.py."""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import or_, select, update

from worker.adapters.ledger.audit import write_audit
from worker.adapters.ledger.janitor_store import needing_reconciliation
from worker.adapters.ledger.reconciliation_runs import DifferenceRow, ReconciliationRuns, RunRecord
from worker.adapters.ledger.records import RequestRecord, record_of
from worker.adapters.ledger.settlements import Settlement, read_settlement
from worker.adapters.ledger.tables import Status, debit_requests

__all__ = ["BATCH", "DifferenceRow", "LedgerDebit", "Reconciliation", "RunRecord", "Settlement"]

_c = debit_requests.c
# Rows fetched at a time from a day's debits, and request ids per statement of `debits_of`.
BATCH: Final = 1_000


@dataclass(frozen=True, slots=True)
class LedgerDebit:
    """What the ledger knows of a debit, to be matched with Stripe's charge."""

    request_id: str
    payment_id: str | None  # None unless it succeeded
    amount: int  # minor units
    currency: str
    account: str
    status: Status


_DEBIT = select(_c.request_id, _c.payment_id, _c.amount, _c.currency, _c.account, _c.status)


def _debit(row: Any) -> LedgerDebit:
    """A row of `_DEBIT`."""
    status = Status(row.status)
    return LedgerDebit(
        row.request_id, row.payment_id, int(row.amount), row.currency, row.account, status
    )


class Reconciliation(ReconciliationRuns):
    def open_requests(self, limit: int) -> list[RequestRecord]:
        """Requests awaiting reconciliation, the longest untouched first."""
        return needing_reconciliation(self._engine, limit=limit)

    def take(self, request_id: str, owner: str, lease_seconds: float) -> RequestRecord | None:
        """Lease a request awaiting reconciliation to `owner` (free, expired, or already its
        own), which may then claim it (claims.py) to resend it. Its `updated_at` is left
        alone: it says when Stripe was last tried. None when the request does not await
        reconciliation or another holds it."""
        now = self._clock()
        with self._single.connect() as conn:
            taken = (
                conn.execute(
                    update(debit_requests)
                    .where(
                        _c.request_id == request_id,
                        _c.status == str(Status.NEEDS_RECONCILIATION),
                        or_(
                            _c.lease_until.is_(None),
                            _c.lease_until < now,
                            _c.lease_owner == owner,
                        ),
                    )
                    .values(lease_owner=owner, lease_until=now + timedelta(seconds=lease_seconds))
                    .returning(*debit_requests.c)
                )
                .mappings()
                .one_or_none()
            )
        return None if taken is None else record_of(taken)

    def release(self, request_id: str, owner: str) -> None:
        """Give up `owner`'s lease at once; someone else's is left alone."""
        with self._engine.begin() as conn:
            conn.execute(
                update(debit_requests)
                .where(_c.request_id == request_id, _c.lease_owner == owner)
                .values(lease_owner=None, lease_until=None)
            )

    def settlement(self, request_id: str) -> Settlement | None:
        with self._single.connect() as conn:
            return read_settlement(conn, request_id)

    def add_audit(
        self, request_id: str, action: str, actor: str, detail: Mapping[str, Any]
    ) -> None:
        """An entry in a request's trail that changes nothing else (e.g. "reconcile_ambiguous")."""
        with self._engine.begin() as conn:
            write_audit(
                conn,
                at=self._clock(),
                entity="request",
                entity_id=request_id,
                action=action,
                actor=actor,
                detail=dict(detail),
            )

    def charged_between(self, start: datetime, end: datetime) -> Iterator[LedgerDebit]:
        """Every succeeded request whose charge was made in [start, end), oldest charge first,
        fetched BATCH rows at a time (a server-side cursor on PostgreSQL): a day may hold a
        million. Holds one pooled connection until the iterator is exhausted or closed."""
        query = _DEBIT.where(
            _c.status == str(Status.SUCCEEDED), _c.charged_at >= start, _c.charged_at < end
        ).order_by(_c.charged_at)
        with self._engine.connect() as conn:
            for row in conn.execution_options(yield_per=BATCH).execute(query):
                yield _debit(row)

    def debits_of(self, request_ids: Collection[str]) -> dict[str, LedgerDebit]:
        """The ledger's view of each of these requests it holds, whatever its status, by
        request id; BATCH ids per statement."""
        wanted = list(dict.fromkeys(request_ids))
        found: dict[str, LedgerDebit] = {}
        if not wanted:
            return found
        with self._single.connect() as conn:
            for start in range(0, len(wanted), BATCH):
                batch = wanted[start : start + BATCH]
                rows = conn.execute(_DEBIT.where(_c.request_id.in_(batch)))
                found.update((row.request_id, _debit(row)) for row in rows)
        return found
