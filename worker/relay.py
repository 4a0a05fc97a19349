"""The outbox relay: publishes events whose inline publish failed (broker away), oldest
first. Sending twice is possible (at-least-once); the event id lets consumers dedupe."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from worker.bootstrap import runtime_of
from worker.ledger import Ledger
from worker.ports import EventPublisher, PublishFailed

log = logging.getLogger(__name__)

# Younger rows are still being published inline by the task that wrote them.
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


class RelayStep(bootsteps.StartStopStep):
    """Runs the relay in a background thread of every worker process."""

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # A cold shutdown calls terminate, not stop: the relay must end either way.
    terminate = stop
    shutdown = stop

    def _loop(self) -> None:
        runtime = runtime_of(self._app)
        interval = runtime.settings.relay_interval_seconds
        while not self._stop.wait(interval):
            try:
                services = runtime.services()
                relay_once(services.ledger, services.publisher)
            except Exception:  # the relay must outlive a bad round (e.g. database restart)
                log.exception("relay round failed; trying again in %.0f s", interval)
