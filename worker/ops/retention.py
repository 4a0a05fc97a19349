"""The retention: the ledger's transient rows removed once they are old, so that it stays
the same size however long it runs at a steady rate.

- An event in the outbox is removed `outbox_retention_seconds` (7 days) after it was sent;
  an unsent one stays until it is sent. A redelivered command of a finished request still
  gets its event: it is built again from the request's row (handlers.outcome_event).
- A producer's daily reservation is removed after as long, and never within the day it
  counts in.
- Nothing else: requests, audit entries, settlements, refund budgets, consents and proofs
  stay for good.

Rows go in batches of 1,000, one short transaction each, skipping any row a worker holds.
Every worker process runs a round every `retention_interval_seconds`; one of all hosts at a
time does the work (an advisory lock on PostgreSQL), the others skip their round. Also run
by `debit-worker retention --once`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Final

from sqlalchemy import Engine

from worker.adapters.ledger.retention_store import RetentionStore, reservation_cutoff
from worker.bootstrap import Runtime
from worker.ops.background import PeriodicStep

log = logging.getLogger(__name__)

BATCH: Final = 1000
# A background round stops after this long; what is left waits for the next round (a first
# round on a ledger that never had a retention may have months of rows to remove).
ROUND_SECONDS: Final = 120.0
PAUSE_SECONDS: Final = 0.01  # between two batches: the workers' own writes come first


@dataclass(frozen=True)
class RetentionRound:
    ran: bool  # False: another process had the turn, or the retention is off
    events: int = 0  # sent outbox events removed
    reservations: int = 0  # producers' reservations removed
    complete: bool = True  # False: the round's time ran out before all was removed


@dataclass
class _Budget:
    deadline: float | None  # monotonic seconds; None: no limit
    clock: Callable[[], float]
    sleep: Callable[[float], None]

    def drain(self, batch: Callable[[], int], size: int) -> tuple[int, bool]:
        """Run `batch` until one removes fewer than `size` rows (done) or time is up."""
        removed = 0
        while True:
            count = batch()
            removed += count
            if count < size:
                return removed, True
            self.sleep(PAUSE_SECONDS)
            if self.deadline is not None and self.clock() >= self.deadline:
                return removed, False


def retention_once(
    engine: Engine,
    now: datetime,
    retention_seconds: float,
    *,
    batch: int = BATCH,
    round_seconds: float | None = ROUND_SECONDS,
    monotonic: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> RetentionRound:
    """One round: what is past the retention at `now`, removed (`round_seconds` None: all of
    it, however long that takes)."""
    if retention_seconds <= 0:
        return RetentionRound(ran=False)
    store = RetentionStore(engine)
    with store.turn() as conn:
        if conn is None:
            log.debug("retention: another process is removing; skipping this round")
            return RetentionRound(ran=False)
        deadline = None if round_seconds is None else monotonic() + round_seconds
        budget = _Budget(deadline, monotonic, sleep)
        sent_before = now - timedelta(seconds=retention_seconds)
        events, complete = budget.drain(
            lambda: store.remove_sent_events(conn, sent_before, batch), batch
        )
        reservations = 0
        reserved_before = reservation_cutoff(now, retention_seconds)
        for window in store.reservation_windows(conn) if complete else []:
            removals = partial(store.remove_reservations, conn, window, reserved_before, batch)
            removed, complete = budget.drain(removals, batch)
            reservations += removed
            if not complete:
                break
    done = RetentionRound(True, events, reservations, complete)
    if events or reservations:
        log.info(
            "retention: removed %d sent event(s) and %d reservation(s)%s",
            events,
            reservations,
            "" if complete else "; the rest in the next round",
        )
    return done


class RetentionStep(PeriodicStep):
    """Runs the retention in a background thread of every worker process."""

    thread_name = "retention"

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.retention_interval_seconds

    def run_round(self, runtime: Runtime) -> None:
        services = runtime.services()
        retention_once(
            services.ledger.engine, services.clock(), runtime.settings.outbox_retention_seconds
        )
