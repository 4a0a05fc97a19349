"""Account debits answered 500 now and carried out later (the `executed_late` fault).

Stripe says a 500 is indeterminate: the operation may still happen. The sandbox queues the
debit with the time it becomes due on the sandbox clock; `Sandbox.run_due` makes it before
any request is served once that time has passed, so GETs and lists see it once due.
"""

from __future__ import annotations

import heapq
import itertools
from dataclasses import dataclass, field

from worker.sandbox.params import DebitParams


@dataclass(frozen=True, order=True)
class LateDebit:
    due: float  # sandbox clock, epoch seconds
    sequence: int
    debit: DebitParams = field(compare=False)
    request_id: str = field(compare=False)
    idempotency_key: str | None = field(compare=False)


class LateDebits:
    def __init__(self) -> None:
        self._queue: list[LateDebit] = []
        self._sequence = itertools.count()

    def __len__(self) -> int:
        return len(self._queue)

    def schedule(
        self, due: float, debit: DebitParams, request_id: str, idempotency_key: str | None
    ) -> None:
        heapq.heappush(
            self._queue, LateDebit(due, next(self._sequence), debit, request_id, idempotency_key)
        )

    def pop_due(self, now: float) -> list[LateDebit]:
        """The debits due at `now`, in the order they fell due."""
        due: list[LateDebit] = []
        while self._queue and self._queue[0].due <= now:
            due.append(heapq.heappop(self._queue))
        return due
