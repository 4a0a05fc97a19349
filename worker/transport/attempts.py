"""Every attempt at a debit, in one engine.

The first attempt runs straight from the intake on a worker thread, with the admitted command
(admission.py): most debits end there, never copied into a task message. A request that needs
another attempt becomes a `process_debit` Celery task carrying its request id only; the
command, its producer and its state come from the ledger (`handlers.resume`). `celery
inspect`, Flower and task events see those later attempts; only the logs show first attempts.

What follows a failed attempt is `next_step(error, number)`, a pure function that retries
only the errors it names; anything else is escalated at once, never retried blindly.
"""

from __future__ import annotations

import logging
import random
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any, Final, Literal, Protocol

from celery import Celery
from celery.exceptions import Reject, Retry

from schemas.commands import DebitRequested
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE
from worker.backoff import retry_delay
from worker.bootstrap import Runtime
from worker.domain.errors import (
    OperatorActionNeeded,
    RequestBusy,
    TransientFailure,
    Unclaimed,
    Unresolvable,
)
from worker.domain.ports import PublishFailed
from worker.handlers import Result, Services, handle_admission
from worker.ops import metrics
from worker.ops.observability import log_context, report_unexpected
from worker.settings import Settings
from worker.transport.admission import Admitted, Invalid, admit
from worker.transport.parsing import Undeliverable
from worker.transport.topology import BROKER_ERRORS, TASK_QUEUE

log = logging.getLogger(__name__)

PROCESS_TASK: Final = "debit_worker.process_debit"
# The errors worth another attempt, each named: nothing was decided, or only a repeat of the
# same call with the same key can decide it.
RETRIED: Final = (TransientFailure, *LEDGER_UNAVAILABLE, PublishFailed, *BROKER_ERRORS)


@dataclass(frozen=True, slots=True)
class NextStep:
    kind: Literal["retry", "escalate", "leave"]
    countdown: int = 0  # seconds before the retry


def next_step(
    error: Exception, number: int, settings: Settings, rng: random.Random | None = None
) -> NextStep:
    """What follows failed attempt `number` (1-based)."""
    if isinstance(error, Unresolvable) or not isinstance(error, RETRIED):
        return NextStep("escalate")
    if number >= settings.max_attempts:
        # A busy request's lease holder finishes it; if that died, the janitor resumes it.
        return NextStep("leave" if isinstance(error, RequestBusy) else "escalate")
    at_least = error.retry_after if isinstance(error, TransientFailure) else None
    delay = retry_delay(
        number,
        base=settings.retry_base_seconds,
        cap=settings.retry_max_seconds,
        at_least=at_least,
        rng=rng,
    )
    # RabbitMQ's delayed delivery (used for quorum queues) counts in whole seconds.
    return NextStep("retry", max(1, round(delay)))


class Attempt(Protocol):
    @property
    def number(self) -> int:
        """1 for the first attempt."""

    @property
    def task_id(self) -> str:
        """Kept by every attempt of one request (it names the lease owner)."""

    def retry_in(self, countdown: int, error: Exception) -> str:
        """Schedule the next attempt; Reject(requeue=True) if that cannot be done."""


class Settle(Enum):
    ACK = "ack"  # the attempt ended, or the next one is in the task queue
    REQUEUE = "requeue"  # nothing could be recorded or scheduled: the command goes back
    REJECT = "reject"  # a dead letter that could not be published: the queue's DLX takes it


@dataclass(frozen=True, slots=True)
class Delivery:
    """A command as the intake took it off its queue."""

    body: bytes
    headers: dict[str, str]  # the signature's, and the intake's receipt stamp
    original_headers: dict[str, Any]  # all of them, for a dead letter
    content_type: str | None


def send_attempt(app: Celery, request_id: str, **options: Any) -> None:
    """Publish a `process_debit` task for a later attempt of a claimed request (a retry, the
    janitor's re-enqueue); `options` as Celery's send_task takes them."""
    app.send_task(PROCESS_TASK, args=(request_id,), queue=TASK_QUEUE, **options)


class FirstAttempt:
    """Attempt number 1; its retry is a `process_debit` task with the same task id, so every
    attempt names the same lease owner."""

    number = 1

    def __init__(self, app: Celery, runtime: Runtime, task_id: str, request_id: str) -> None:
        self._app = app
        self._runtime = runtime
        self.task_id = task_id
        self._request_id = request_id

    def retry_in(self, countdown: int, error: Exception) -> str:
        if not _claimed(self._runtime, self._request_id):
            # Later attempts read the command from the ledger: without a claim there is
            # nothing for them to read, so the command itself waits in its queue.
            raise Reject("not in the ledger yet; the command goes back", requeue=True)
        try:
            send_attempt(
                self._app,
                self._request_id,
                task_id=self.task_id,
                countdown=countdown,
                retries=self.number,  # Celery counts retries from 0: this is attempt 2
            )
        except BROKER_ERRORS as exc:
            raise Reject(f"next attempt not published: {exc!r}", requeue=True) from error
        return "retry_scheduled"


def run_first_attempt(app: Celery, runtime: Runtime, delivery: Delivery) -> Settle:
    """On a worker thread: admit the command, then run its first attempt. Never raises: the
    intake settles the command by what this returns."""
    services = runtime.services()
    try:
        admission = admit(delivery.body, delivery.headers, services.auth, services.clock())
    except Undeliverable as exc:
        return dead_letter(runtime, delivery, str(exc))
    if isinstance(admission, Admitted):
        request_id = admission.command.request_id
    elif isinstance(admission, Invalid):
        request_id = admission.error.request_id
    else:
        request_id = admission.request_id
    task_id = f"{request_id}:{uuid.uuid4().hex[:12]}"
    attempt = FirstAttempt(app, runtime, task_id, request_id)
    verified = admission.producer if isinstance(admission, Admitted) else None
    try:
        with log_context(producer=verified.producer if verified else None):
            outcome = run_attempt(
                attempt,
                runtime,
                request_id,
                lambda svc, owner: handle_admission(admission, svc, owner),
            )
    except Reject:  # already logged with its reason
        return Settle.REQUEUE
    log.debug("first attempt of task %s: %s", task_id, outcome)
    return Settle.ACK


def dead_letter(runtime: Runtime, delivery: Delivery, reason: str) -> Settle:
    metrics.dead_lettered("intake")  # published, or else taken by the queue's DLX
    try:
        runtime.dead_letters.send(
            delivery.body,
            reason=reason,
            stage="intake",
            headers=delivery.original_headers,
            content_type=delivery.content_type,
        )
    except PublishFailed:
        log.warning("dead-letter publish failed; rejecting to the queue's DLX instead")
        return Settle.REJECT
    return Settle.ACK


def run_attempt(
    attempt: Attempt,
    runtime: Runtime,
    request_id: str,
    work: Callable[[Services, str], Result],
) -> str:
    """Run `work` (the handler, given the services and the lease owner) as `attempt`, then
    retry, escalate or leave it as next_step says. Raises Reject(requeue=True) when what
    comes next could not be recorded or scheduled: the message is kept, never forgotten."""
    with log_context(request_id=request_id, attempt=attempt.number):
        try:
            with metrics.attempt(attempt.number):
                return _attempt(attempt, runtime, request_id, work)
        except (Retry, Reject):
            raise
        except Exception as exc:  # the message is kept whatever broke here
            log.exception("request %s: attempt failed outside the handler; requeued", request_id)
            raise Reject(str(exc), requeue=True) from exc


def _attempt(
    attempt: Attempt,
    runtime: Runtime,
    request_id: str,
    work: Callable[[Services, str], Result],
) -> str:
    # Stable across the request's attempts: a retry whose lease could not be released (the
    # database was away) takes it straight back instead of waiting for it to expire.
    owner = f"{runtime.identity}:{attempt.task_id}"
    try:
        return work(runtime.services(), owner).value
    except Unclaimed:
        log.warning("request %s: not in the ledger; nothing to resume", request_id)
        return "unclaimed"
    except Exception as exc:  # noqa: BLE001 - classified by next_step, which retries only what it names
        error = exc
    _log_failure(error, attempt.number, request_id)
    step = next_step(error, attempt.number, runtime.settings)
    if step.kind == "escalate":
        return _give_up(runtime, request_id, owner, error)
    if step.kind == "leave":
        log.warning(
            "request %s: leaving it to its lease holder after %d tries", request_id, attempt.number
        )
        return "left_to_lease_holder"
    _release(runtime, request_id, owner)
    log.info("request %s: next attempt in %d s", request_id, step.countdown)
    try:
        return attempt.retry_in(step.countdown, error)
    except Reject as unpublished:
        log.warning("request %s: retry not scheduled (%s); requeued", request_id, unpublished)
        raise


def _log_failure(error: Exception, number: int, request_id: str) -> None:
    if isinstance(error, TransientFailure):
        level = logging.ERROR if isinstance(error, OperatorActionNeeded) else logging.WARNING
        log.log(level, "attempt %d of %s: %s", number, request_id, error.reason)
    elif isinstance(error, LEDGER_UNAVAILABLE):
        log.warning("attempt %d of %s: ledger unavailable: %s", number, request_id, error)
    elif isinstance(error, RETRIED):
        log.warning("attempt %d of %s: broker unavailable: %r", number, request_id, error)
    elif not isinstance(error, Unresolvable):  # a bug: escalated (and reported) at once
        log.error("attempt %d of %s failed unexpectedly", number, request_id, exc_info=error)


def _claimed(runtime: Runtime, request_id: str) -> bool:
    try:
        return runtime.services().ledger.requests.get(request_id) is not None
    except LEDGER_UNAVAILABLE:
        return False


def _release(runtime: Runtime, request_id: str, owner: str) -> None:
    """Best effort: if the ledger is away the lease simply runs out."""
    try:
        runtime.services().ledger.requests.release(request_id, owner)
    except LEDGER_UNAVAILABLE as exc:
        log.warning("request %s: lease not released (%s); it expires by itself", request_id, exc)


_BOOKKEEPING_TROUBLE: Final = (*LEDGER_UNAVAILABLE, PublishFailed, *BROKER_ERRORS)


def _give_up(runtime: Runtime, request_id: str, owner: str, error: Exception) -> str:
    """Never guess an outcome: escalate the request to needs_reconciliation and keep its
    command as a dead letter an operator can replay (a replay resumes the claim, its producer
    stored with it). A command not in the ledger is not escalated: it goes back to its queue."""
    why = f"{type(error).__name__}: {error}"
    try:
        ledger = runtime.services().ledger
        record = ledger.requests.get(request_id)
        if record is None:
            raise Reject(f"request {request_id} is not in the ledger; requeued", requeue=True)
        ledger.requests.mark_needs_reconciliation(request_id, owner, why)
        runtime.dead_letters.send(
            DebitRequested.model_validate(record.command).model_dump_json(exclude_none=True),
            reason=f"attempts exhausted: {why}",
            stage="task",
            headers={"x-debit-worker-request-id": request_id},
            content_type="application/json",
        )
        metrics.dead_lettered("task")
    except _BOOKKEEPING_TROUBLE as exc:
        log.warning("request %s: escalation not recorded (%s); requeued", request_id, exc)
        raise Reject(str(exc), requeue=True) from exc
    report_unexpected(error, request_id=request_id, escalation=True)
    log.error(
        "request %s needs reconciliation: %s",
        request_id,
        why,
        extra={"outcome": "needs_reconciliation"},
    )
    return "needs_reconciliation"
