"""The janitor: finishes what dead workers left behind, and escalates what time has run out on.

- A request still `received`/`attempting` whose lease ran out (its worker died mid-task: a
  live one renews its leases every third of `claim_lease_seconds`), or that nobody has
  touched for `janitor_stale_after_seconds` (its retry message was lost), is re-enqueued as a
  `process_debit` task naming it, with a `requeued` audit entry naming the lease it found; a
  duplicate task costs only a lookup.
- A request `attempting` whose first Stripe call is older than `key_escalation_after_seconds`
  is escalated to `needs_reconciliation` (Sentry, status) before Stripe forgets its key, and
  never called again.

Runs in a background thread of every worker process, and from `debit-worker janitor --once`.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.janitor_store import abandoned_claims, expiring_attempts, take_over
from worker.bootstrap import Runtime
from worker.domain.errors import Unresolvable
from worker.ops.background import PeriodicStep
from worker.ops.observability import report_unexpected
from worker.settings import Settings
from worker.transport.attempts import send_attempt

log = logging.getLogger(__name__)

ACTOR = "janitor"
BATCH = 500


@dataclass(frozen=True)
class JanitorRound:
    requeued: int
    escalated: int


def janitor_once(
    ledger: Ledger,
    enqueue: Callable[[str], None],
    settings: Settings,
    now: datetime,
) -> JanitorRound:
    escalated = 0
    cutoff = now - timedelta(seconds=settings.key_escalation_after_seconds)
    for record in expiring_attempts(ledger.engine, first_attempt_before=cutoff, limit=BATCH):
        why = (
            f"first Stripe attempt at {record.first_attempt_at}; unresolved after "
            f"{settings.key_escalation_after_seconds:.0f} s, before Stripe forgets the key"
        )
        if ledger.requests.mark_needs_reconciliation(record.request_id, ACTOR, why):
            report_unexpected(Unresolvable(why), request_id=record.request_id, escalation=True)
            log.error("request %s needs reconciliation: %s", record.request_id, why)
            escalated += 1
    requeued = 0
    stale = settings.janitor_stale_after_seconds
    for record in abandoned_claims(ledger.engine, now=now, stale_after=stale, limit=BATCH):
        if take_over(ledger.engine, record, now=now, stale_after=stale, actor=ACTOR):
            enqueue(record.request_id)
            requeued += 1
    if requeued or escalated:
        log.info("janitor: re-enqueued %d abandoned request(s), escalated %d", requeued, escalated)
    return JanitorRound(requeued, escalated)


class JanitorStep(PeriodicStep):
    """Runs the janitor in a background thread of every worker process."""

    thread_name = "janitor"
    first_round_at_start = True  # a restarted process resumes what the dead one held

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.janitor_interval_seconds

    def run_round(self, runtime: Runtime) -> None:
        services = runtime.services()
        enqueue = functools.partial(send_attempt, self._app)
        janitor_once(services.ledger, enqueue, runtime.settings, services.clock())
