"""The reconciliation schedule, in a background thread of every worker process: a settlement
round every `reconcile_interval_seconds`, and once a day (from `daily_proof_hour` UTC) the
proof of the day before, by whichever process of all hosts claims that day first."""

from __future__ import annotations

import logging

from worker.bootstrap import Runtime
from worker.ops.background import PeriodicStep
from worker.ops.daily_proof import due_day, prove
from worker.ops.reconciler import Reconciler

log = logging.getLogger(__name__)

# How often the daily proof's hour is checked when settlement rounds are off.
DAILY_CHECK_SECONDS = 300.0


class ReconcileStep(PeriodicStep):
    thread_name = "reconciler"

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.reconcile_interval_seconds or DAILY_CHECK_SECONDS

    def run_round(self, runtime: Runtime) -> None:
        settings = runtime.settings
        services = runtime.services()
        records = services.require_records()
        if settings.reconcile_interval_seconds > 0:
            Reconciler(
                services,
                records,
                grace_seconds=settings.reconcile_grace_seconds,
                owner=f"reconciler:{runtime.identity}",
            ).settle_round()
        if not settings.daily_proof:
            return
        day = due_day(services.clock(), settings.daily_proof_hour)
        if day is not None and services.ledger.reconciliation.claim_scheduled_day(
            day.isoformat(), runtime.identity
        ):
            prove(services.ledger, records, day, "schedule")
