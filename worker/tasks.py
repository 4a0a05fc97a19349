"""The Celery entry point: hand the raw command to the handler, and turn what it raises into
retries, escalations or dead letters. No business logic lives here."""

from __future__ import annotations

import logging
from typing import Any, Final, Protocol

from celery import Celery, Task
from celery.exceptions import Reject, Retry

from worker.backoff import retry_delay
from worker.bootstrap import Runtime
from worker.errors import (
    OperatorActionNeeded,
    RefusalNotRecorded,
    RequestBusy,
    TransientFailure,
    Unresolvable,
)
from worker.handlers import handle_debit_requested
from worker.ledger.database import LEDGER_UNAVAILABLE
from worker.observability import report_unexpected
from worker.parsing import Undeliverable, screen
from worker.ports import PublishFailed
from worker.publisher import BROKER_ERRORS
from worker.topology import TASK_QUEUE

log = logging.getLogger(__name__)

PROCESS_TASK: Final = "debit_worker.process_debit"
_DATABASE_TROUBLE = LEDGER_UNAVAILABLE  # a pool timeout too: not a DBAPIError
# Recording an escalation or scheduling a retry can itself fail (database or broker away):
# then the command goes back to its queue instead of being acknowledged and forgotten.
_BOOKKEEPING_TROUBLE = (*_DATABASE_TROUBLE, PublishFailed, *BROKER_ERRORS)


class Attempt(Protocol):
    """One attempt at a command: the first runs straight from the intake, later ones are
    `process_debit` tasks. Either way the same code decides what happens next."""

    @property
    def number(self) -> int:
        """1 for the first attempt."""

    @property
    def task_id(self) -> str:
        """Kept by every later attempt of the same command (it names the lease owner)."""

    def retry_in(self, countdown: int, error: Exception) -> str:
        """Schedule the next attempt; Reject(requeue=True) if that cannot be done."""


class _TaskAttempt:
    def __init__(self, task: Task) -> None:  # type: ignore[type-arg]
        self._task = task

    @property
    def number(self) -> int:
        return int(self._task.request.retries) + 1

    @property
    def task_id(self) -> str:
        return str(self._task.request.id)

    def retry_in(self, countdown: int, error: Exception) -> str:
        try:
            raise self._task.retry(countdown=countdown, exc=error)
        except Reject as unpublished:  # Celery's answer when the retry could not be published
            raise Reject(str(unpublished), requeue=True) from error


def send_attempt(app: Celery, *args: Any, **options: Any) -> None:
    """Publish a `process_debit` task for a later attempt (a retry of a first attempt, the
    janitor's re-enqueue); `options` as Celery's send_task takes them (countdown, task_id,
    retries)."""
    app.send_task(PROCESS_TASK, args=args, queue=TASK_QUEUE, **options)


def register_tasks(app: Celery, runtime: Runtime) -> Task:  # type: ignore[type-arg]
    @app.task(bind=True, name=PROCESS_TASK, max_retries=None, acks_late=True)
    def process_debit(
        self: Task,  # type: ignore[type-arg]
        body: str,
        headers: dict[str, str] | None = None,
    ) -> str:
        return run_attempt(_TaskAttempt(self), body, runtime, headers)

    return process_debit


def run_attempt(
    attempt: Attempt, body: str, runtime: Runtime, headers: dict[str, str] | None = None
) -> str:
    """`process`, with bookkeeping that itself broke turned into Reject(requeue=True): the
    command is kept, never acknowledged and forgotten."""
    try:
        return process(attempt, body, runtime, headers)
    except (Retry, Reject):
        raise
    except Exception as exc:
        log.exception("request %s: attempt failed outside the handler; requeued", _request_id(body))
        raise Reject(str(exc), requeue=True) from exc


def process(
    attempt: Attempt,
    body: str,
    runtime: Runtime,
    headers: dict[str, str] | None = None,
) -> str:
    settings = runtime.settings
    number = attempt.number
    # Stable across this command's retries: a retry whose lease could not be released (the
    # database was away) takes it straight back instead of waiting for it to expire.
    owner = f"{runtime.identity}:{attempt.task_id}"
    try:
        return handle_debit_requested(body, runtime.services(), owner, headers).value
    except Undeliverable as exc:  # the intake screens for this; kept for direct publishers
        runtime.dead_letters.send(body, reason=str(exc), stage="task")
        return "dead_lettered"
    except Unresolvable as exc:  # no repeat can tell: escalate now, never guess
        return _give_up(runtime, body, headers, owner, exc)
    except TransientFailure as exc:
        level = logging.ERROR if isinstance(exc, OperatorActionNeeded) else logging.WARNING
        log.log(level, "attempt %d of %s: %s", number, _request_id(body), exc.reason)
        retry_after = exc.retry_after
        error: Exception = exc
    except _DATABASE_TROUBLE as exc:
        log.warning("attempt %d of %s: ledger unavailable: %s", number, _request_id(body), exc)
        retry_after, error = None, exc
    except Exception as exc:  # a bug: report it, and keep the message for a later attempt
        report_unexpected(exc, request_id=_request_id(body))
        log.exception("attempt %d of %s failed unexpectedly", number, _request_id(body))
        retry_after, error = None, exc

    request_id = _request_id(body)
    if number >= settings.max_attempts and isinstance(error, RequestBusy):
        # Its lease holder finishes it; if that process died, the janitor re-enqueues it.
        log.warning("request %s: leaving it to its lease holder after %d tries", request_id, number)
        return "left_to_lease_holder"
    if number >= settings.max_attempts:
        return _give_up(runtime, body, headers, owner, error)
    if request_id:
        _release(runtime, request_id, owner)
    delay = retry_delay(
        number,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        at_least=retry_after,
    )
    # RabbitMQ's delayed delivery (used for quorum queues) counts in whole seconds.
    countdown = max(1, round(delay))
    log.info("request %s: next attempt in %d s", request_id, countdown)
    try:
        return attempt.retry_in(countdown, error)
    except Reject as unpublished:
        log.warning("request %s: retry not scheduled (%s); requeued", request_id, unpublished)
        raise


def _release(runtime: Runtime, request_id: str, owner: str) -> None:
    """Best effort: if the ledger is away the lease simply runs out."""
    try:
        runtime.services().ledger.requests.release(request_id, owner)
    except _DATABASE_TROUBLE as exc:
        log.warning("request %s: lease not released (%s); it expires by itself", request_id, exc)


def _give_up(
    runtime: Runtime,
    body: str,
    headers: dict[str, str] | None,
    owner: str,
    error: Exception,
) -> str:
    """Out of attempts: never guess an outcome. Escalate, and keep the command with the
    headers it came with (its producer's signature: a replay is judged by it)."""
    request_id = _request_id(body)
    why = f"{type(error).__name__}: {error}"
    try:
        if isinstance(error, RefusalNotRecorded):  # nothing was claimed: nothing to reconcile
            runtime.dead_letters.send(body, reason=error.reason, stage="auth", headers=headers)
            log.warning("request %s: %s; dead-lettered", request_id, error.reason)
            return "dead_lettered"
        if request_id:
            runtime.services().ledger.requests.mark_needs_reconciliation(request_id, owner, why)
        runtime.dead_letters.send(
            body, reason=f"attempts exhausted: {why}", stage="task", headers=headers
        )
    except _BOOKKEEPING_TROUBLE as exc:
        log.warning("request %s: escalation not recorded (%s); requeued", request_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    report_unexpected(error, request_id=request_id, escalation=True)
    log.error("request %s needs reconciliation after every attempt: %s", request_id, why)
    return "needs_reconciliation"


def _request_id(body: str) -> str | None:
    try:
        return screen(body)
    except Undeliverable:
        return None
