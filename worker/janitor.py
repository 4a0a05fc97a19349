"""The janitor: finishes what dead workers left behind, and escalates what time has run out on.

- A request still `received`/`attempting` whose lease ran out (its worker died mid-task), or
  that nobody has touched for `janitor_stale_after_seconds` (its retry message was lost), is
  re-enqueued: its stored command goes back to the task queue. Every step being idempotent,
  a duplicate task costs nothing but a lookup.
- A request `attempting` whose first Stripe call is older than
  `key_escalation_after_seconds` is escalated to `needs_reconciliation` (Sentry, status),
  before Stripe forgets its idempotency key. It is never called again.

Runs as a background thread of every worker process (like the outbox relay), and once from
`debit-worker janitor --once`.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from celery import bootsteps

from worker.bootstrap import runtime_of
from worker.errors import Unresolvable
from worker.ledger import Ledger
from worker.ledger.janitor_store import abandoned_claims, expiring_attempts, take_over
from worker.observability import report_unexpected
from worker.settings import Settings
from worker.tasks import PROCESS_TASK
from worker.topology import TASK_QUEUE

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
        if take_over(ledger.engine, record.request_id, now=now, stale_after=stale):
            enqueue(json.dumps(record.command))
            requeued += 1
    if requeued or escalated:
        log.info("janitor: re-enqueued %d abandoned request(s), escalated %d", requeued, escalated)
    return JanitorRound(requeued, escalated)


def task_enqueuer(app: Any) -> Callable[[str], None]:
    def enqueue(body: str) -> None:
        app.tasks[PROCESS_TASK].apply_async(args=[body], queue=TASK_QUEUE)

    return enqueue


class JanitorStep(bootsteps.StartStopStep):
    """Runs the janitor in a background thread of every worker process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._thread = threading.Thread(target=self._loop, name="janitor", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        runtime = runtime_of(self._app)
        interval = runtime.settings.janitor_interval_seconds
        enqueue = task_enqueuer(self._app)
        while not self._stop.wait(interval):
            try:
                services = runtime.services()
                janitor_once(services.ledger, enqueue, runtime.settings, services.clock())
            except Exception:  # the janitor must outlive a bad round (e.g. database restart)
                log.exception("janitor round failed; trying again in %.0f s", interval)
