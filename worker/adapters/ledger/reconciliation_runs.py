"""Proofs of a day: the schedule's lock on each day, and each run with its counts and the
differences it found between Stripe's charges and the ledger's debits."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any

from sqlalchemy import insert, select, update

from worker.adapters.ledger.database import insert_ignoring_duplicates
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import (
    reconciliation_differences,
    reconciliation_runs,
    scheduled_proofs,
)

_r = reconciliation_runs.c
_d = reconciliation_differences.c


@dataclass(frozen=True, slots=True)
class RunRecord:
    """A run; its counts are None while it runs."""

    id: int
    day: str  # "YYYY-MM-DD"
    trigger: str  # "schedule" | "cli"
    started_at: datetime
    finished_at: datetime | None
    status: str  # "running" | "clean" | "differences" | "error"
    stripe_charges: int | None
    ledger_debits: int | None
    matched: int | None
    differences: int | None
    unexplained: int | None
    list_requests: int | None
    error: str | None


@dataclass(frozen=True, slots=True)
class DifferenceRow:
    kind: str  # e.g. "stripe_only", "ledger_only", "paid_twice"
    request_id: str | None
    charge_id: str | None
    explained: bool
    detail: dict[str, Any]


_RUN_COLUMNS = tuple(_r[f.name] for f in fields(RunRecord))  # each field named as its column
_DIFFERENCE_COLUMNS = (_d.kind, _d.request_id, _d.charge_id, _d.explained, _d.detail)


class ReconciliationRuns(Store):
    def claim_scheduled_day(self, day: str, owner: str) -> bool:
        """True for the first caller of all worker processes (of all hosts) for `day`: the
        one that proves it on schedule."""
        row = {"day": day, "claimed_at": self._clock(), "owner": owner}
        with self._engine.begin() as conn:
            return insert_ignoring_duplicates(conn, scheduled_proofs, row)

    def start_run(self, day: str, trigger: str) -> int:
        """A new run of `day`, running from now; its id."""
        values = {"day": day, "trigger": trigger, "started_at": self._clock(), "status": "running"}
        with self._engine.begin() as conn:
            created = conn.execute(insert(reconciliation_runs).values(values).returning(_r.id))
            return int(created.scalar_one())

    def add_differences(self, run_id: int, differences: Sequence[DifferenceRow]) -> None:
        """All in one statement (run for each row by the driver), in their order."""
        if not differences:
            return
        rows = [
            {
                "run_id": run_id,
                "kind": d.kind,
                "request_id": d.request_id,
                "charge_id": d.charge_id,
                "explained": d.explained,
                "detail": d.detail,
            }
            for d in differences
        ]
        with self._engine.begin() as conn:
            conn.execute(insert(reconciliation_differences), rows)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        stripe_charges: int,
        ledger_debits: int,
        matched: int,
        differences: int,
        unexplained: int,
        list_requests: int,
        error: str | None = None,
    ) -> None:
        """Record how a running run ended: "clean", "differences" or "error". Raises
        LookupError when no run `run_id` is running (unknown, or already finished: its
        record stands)."""
        with self._engine.begin() as conn:
            finished = conn.execute(
                update(reconciliation_runs)
                .where(_r.id == run_id, _r.status == "running")
                .values(
                    status=status,
                    finished_at=self._clock(),
                    stripe_charges=stripe_charges,
                    ledger_debits=ledger_debits,
                    matched=matched,
                    differences=differences,
                    unexplained=unexplained,
                    list_requests=list_requests,
                    error=error,
                )
            ).rowcount
        if finished != 1:
            raise LookupError(f"no reconciliation run {run_id} is running")

    def run(self, run_id: int) -> RunRecord | None:
        with self._single.connect() as conn:
            row = conn.execute(select(*_RUN_COLUMNS).where(_r.id == run_id)).one_or_none()
        return None if row is None else RunRecord(*row)

    def runs(self, limit: int) -> list[RunRecord]:
        """The newest `limit` runs, newest first."""
        with self._single.connect() as conn:
            rows = conn.execute(select(*_RUN_COLUMNS).order_by(_r.id.desc()).limit(limit))
            return [RunRecord(*row) for row in rows]

    def differences(self, run_id: int) -> list[DifferenceRow]:
        """A run's differences, in the order they were added."""
        with self._single.connect() as conn:
            rows = conn.execute(
                select(*_DIFFERENCE_COLUMNS).where(_d.run_id == run_id).order_by(_d.id)
            )
            return [DifferenceRow(*row) for row in rows]
