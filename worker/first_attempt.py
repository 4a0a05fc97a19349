"""A command's first attempt, run by a worker thread straight from the intake.

Most debits end in their first attempt, so the command is not copied into a task message
first: the intake hands it to the worker's thread pool, and acknowledges it only when the
attempt has ended (an outcome recorded, or the next attempt safely scheduled). A worker that
dies mid-attempt leaves the command unacknowledged, and RabbitMQ delivers it again; the
ledger's claim makes that harmless, exactly as for a redelivered task.

Only a command that needs another attempt becomes a `process_debit` task, published with its
countdown (Celery's delayed delivery) and counted as attempt 2, before the command is
acknowledged.
"""

from __future__ import annotations

import logging
from enum import Enum

from celery import Celery
from celery.exceptions import Reject

from worker.bootstrap import Runtime
from worker.publisher import BROKER_ERRORS
from worker.tasks import run_attempt, send_attempt

log = logging.getLogger(__name__)


class Settle(Enum):
    ACK = "ack"  # the attempt ended, or the next one is in the task queue
    REQUEUE = "requeue"  # nothing could be recorded or scheduled: the command goes back


class FirstAttempt:
    """Attempt number 1; its retry is a `process_debit` task that carries the same task id,
    so every attempt of the command names the same lease owner."""

    number = 1

    def __init__(self, app: Celery, task_id: str, body: str, headers: dict[str, str]) -> None:
        self._app = app
        self.task_id = task_id
        self._body = body
        self._headers = headers

    def retry_in(self, countdown: int, error: Exception) -> str:
        try:
            send_attempt(
                self._app,
                self._body,
                self._headers,
                task_id=self.task_id,
                countdown=countdown,
                retries=self.number,  # Celery counts retries from 0: this is attempt 2
            )
        except BROKER_ERRORS as exc:
            raise Reject(f"next attempt not published: {exc!r}", requeue=True) from error
        return "retry_scheduled"


def run_first_attempt(
    app: Celery, runtime: Runtime, task_id: str, body: str, headers: dict[str, str]
) -> Settle:
    """Never raises: the caller settles the command by what this returns."""
    try:
        outcome = run_attempt(FirstAttempt(app, task_id, body, headers), body, runtime, headers)
    except Reject:  # already logged with its reason
        return Settle.REQUEUE
    log.debug("first attempt of task %s: %s", task_id, outcome)
    return Settle.ACK
