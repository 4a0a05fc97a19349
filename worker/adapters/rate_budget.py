"""Stripe's request budget: every Stripe call takes a token first, so the worker slows itself
down instead of collecting 429s. Per process here; `worker.adapters.redis_budget` shares one budget
between every process and host through Redis.

Two priorities: debits take a token whenever there is one (`acquire`); reconciliation reads
take one only from spare capacity (`acquire_spare`), while the bucket holds at least half its
burst. At full debit load the debits keep the bucket below that mark, so the reads wait
instead of taking the debits' budget."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class RateBudget(Protocol):
    def acquire(self) -> None:
        """Block until one Stripe request may be sent."""

    def acquire_spare(self) -> None:
        """Block until one low-priority Stripe request may be sent: only while the budget
        holds at least half its burst (but at least one token), so debits go first."""


def spare_mark(burst: float) -> float:
    """Tokens a low-priority request needs saved up before it takes one."""
    return max(1.0, burst / 2)


class LocalTokenBucket:
    """Thread-safe token bucket: `rate` tokens per second, at most `burst` saved up."""

    def __init__(
        self,
        rate: float,
        burst: float | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self._rate = rate
        self._burst = burst if burst is not None else max(1.0, rate / 10)
        self._tokens = self._burst
        self._clock = clock
        self._sleep = sleep
        self._updated = clock()
        self._lock = threading.Lock()

    @property
    def rate(self) -> float:
        return self._rate

    def acquire(self) -> None:
        self._take_when_holding(1.0)

    def acquire_spare(self) -> None:
        self._take_when_holding(spare_mark(self._burst))

    def _take_when_holding(self, mark: float) -> None:
        """Take one token once the bucket holds at least `mark`, re-checking after each nap:
        others may have taken what accrued meanwhile."""
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= mark:
                    self._tokens -= 1
                    return
                wait = (mark - self._tokens) / self._rate
            self._sleep(wait)


class Unlimited:
    def acquire(self) -> None:
        return None

    def acquire_spare(self) -> None:
        return None
