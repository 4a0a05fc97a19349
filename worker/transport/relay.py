"""The outbox relay: publishes events the worker's outbound could not (broker away, event
pump paused or full), oldest first, each confirmed before the next. Sending twice is
possible (at-least-once); the event id lets consumers dedupe."""

from __future__ import annotations

import logging

from worker.adapters.ledger import Ledger
from worker.bootstrap import Runtime
from worker.domain.ports import EventPublisher, PublishFailed
from worker.ops.background import PeriodicStep

log = logging.getLogger(__name__)

# Younger rows are still with the outbound of the worker that recorded them.
GRACE_SECONDS = 10.0


def relay_once(
    ledger: Ledger, publisher: EventPublisher, *, grace: float = GRACE_SECONDS, limit: int = 500
) -> int:
    sent = 0
    for pending in ledger.outbox.unsent(older_than_seconds=grace, limit=limit):
        try:
            publisher.publish(pending.event)
        except PublishFailed as exc:
            log.warning("relay: broker still unavailable (%s); %d sent this round", exc, sent)
            break
        ledger.outbox.mark_sent(pending.row_id)
        sent += 1
    if sent:
        log.info("relay: published %d event(s) from the outbox", sent)
    return sent


class RelayStep(PeriodicStep):
    """Runs the relay in a background thread of every worker process."""

    thread_name = "outbox-relay"

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.relay_interval_seconds

    def run_round(self, runtime: Runtime) -> None:
        relay_once(runtime.services().ledger, runtime.event_publisher)
