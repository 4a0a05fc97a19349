"""The daily proof that the ledger and Stripe agree: every account-debit charge Stripe holds
for one UTC day, read page by page, matched one to one with the ledger's successes charged
that day (`worker.domain.day_proof`). The run and each difference are written to the
ledger; an unexplained difference alerts.

Run by `debit-worker reconcile --day YYYY-MM-DD`, and by every worker once a day
(`ReconcileStep`), whichever process claims the day first.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.reconciliation import DifferenceRow
from worker.domain.day_proof import DayProof, LedgerDebit, prove_day
from worker.domain.ports import StripeRecords
from worker.ops.observability import report_reconciliation

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProofRun:
    run_id: int
    day: date
    proof: DayProof
    list_requests: int

    @property
    def status(self) -> str:
        return "clean" if not self.proof.differences else "differences"

    def as_json(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "day": self.day.isoformat(),
            "status": self.status,
            "stripe_charges": self.proof.stripe_charges,
            "ledger_debits": self.proof.ledger_debits,
            "matched": self.proof.matched,
            "differences": [
                {
                    "kind": str(d.kind),
                    "request_id": d.request_id,
                    "charge_id": d.charge_id,
                    "explained": d.explained,
                    "detail": d.detail,
                }
                for d in self.proof.differences
            ],
            "unexplained": self.proof.unexplained,
            "list_requests": self.list_requests,
        }


def day_bounds(day: date) -> tuple[datetime, datetime]:
    start = datetime.combine(day, time(), tzinfo=UTC)
    return start, start + timedelta(days=1)


def prove(ledger: Ledger, records: StripeRecords, day: date, trigger: str) -> ProofRun:
    """Prove `day`; the run is recorded whatever happens (an error marks it `error`)."""
    store = ledger.reconciliation
    run_id = store.start_run(day.isoformat(), trigger)
    before = records.list_requests
    start, end = day_bounds(day)
    try:
        ours: dict[str, LedgerDebit] = {
            debit.payment_id: debit
            for debit in store.charged_between(start, end)
            if debit.payment_id is not None
        }
        proof = prove_day(records.debit_charges(start, end), ours, store.debits_of)
    except Exception as exc:  # recorded as the run's error, then raised on
        store.finish_run(
            run_id,
            status="error",
            stripe_charges=0,
            ledger_debits=0,
            matched=0,
            differences=0,
            unexplained=0,
            list_requests=records.list_requests - before,
            error=f"{type(exc).__name__}: {exc}",
        )
        raise
    run = ProofRun(run_id, day, proof, records.list_requests - before)
    store.add_differences(
        run_id,
        [
            DifferenceRow(
                kind=str(d.kind),
                request_id=d.request_id,
                charge_id=d.charge_id,
                explained=d.explained,
                detail=d.detail,
            )
            for d in proof.differences
        ],
    )
    store.finish_run(
        run_id,
        status=run.status,
        stripe_charges=proof.stripe_charges,
        ledger_debits=proof.ledger_debits,
        matched=proof.matched,
        differences=len(proof.differences),
        unexplained=proof.unexplained,
        list_requests=run.list_requests,
    )
    if proof.unexplained:
        why = (
            f"daily proof of {day.isoformat()} (run {run_id}): {proof.unexplained} unexplained "
            f"difference(s) between the ledger and Stripe; see `debit-worker reconcile --day "
            f"{day.isoformat()}` or the reconciliation_differences of run {run_id}"
        )
        report_reconciliation(why, request_id=None, kind="daily_proof")
        log.error("%s", why)
    else:
        log.info(
            "daily proof of %s (run %d): %d charge(s) at Stripe, %d matched, %d explained "
            "difference(s), %d list request(s)",
            day.isoformat(),
            run_id,
            proof.stripe_charges,
            proof.matched,
            len(proof.differences),
            run.list_requests,
        )
    return run


def due_day(now: datetime, proof_hour: int) -> date | None:
    """The day the schedule should prove at `now`: yesterday, once `proof_hour` (UTC) has
    come; None before it."""
    if now.astimezone(UTC).hour < proof_hour:
        return None
    return now.astimezone(UTC).date() - timedelta(days=1)
