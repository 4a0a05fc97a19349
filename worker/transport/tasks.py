"""The Celery entry point of later attempts: `process_debit(request_id)` hands the request to
the attempt engine (worker/transport/attempts.py). No business logic lives here."""

from __future__ import annotations

from celery import Celery, Task
from celery.exceptions import Reject

from worker.bootstrap import Runtime
from worker.handlers import resume
from worker.transport.attempts import PROCESS_TASK, run_attempt
from worker.transport.parsing import Undeliverable, screen


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


def register_tasks(app: Celery, runtime: Runtime) -> Task:  # type: ignore[type-arg]
    @app.task(bind=True, name=PROCESS_TASK, max_retries=None, acks_late=True)
    def process_debit(self: Task, request_id: str, *_legacy: object) -> str:  # type: ignore[type-arg]
        request_id = _legacy_request_id(request_id)
        return run_attempt(
            _TaskAttempt(self),
            runtime,
            request_id,
            lambda services, owner: resume(request_id, services, owner),
        )

    return process_debit


def _legacy_request_id(first: str) -> str:
    """Task messages of the version before carried the command's body instead of its request
    id: only the id is read from it, the rest comes from the ledger as for any later attempt.
    Kept while such messages may still wait in the task queue after an upgrade."""
    if not first.startswith("{"):
        return first
    try:
        return screen(first)
    except Undeliverable:
        return first  # resume() finds no such request: logged, and the task ends
