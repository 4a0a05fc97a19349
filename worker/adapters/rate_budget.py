"""Stripe's request budget: every Stripe call takes a token first, so the worker slows itself
down instead of collecting 429s. Per process here; `worker.adapters.redis_budget` shares one budget
between every process and host through Redis."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Protocol


class RateBudget(Protocol):
    def acquire(self) -> None:
        """Block until one Stripe request may be sent."""


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
        while True:
            with self._lock:
                now = self._clock()
                self._tokens = min(self._burst, self._tokens + (now - self._updated) * self._rate)
                self._updated = now
                if self._tokens >= 1:
                    self._tokens -= 1
                    return
                wait = (1 - self._tokens) / self._rate
            self._sleep(wait)


class Unlimited:
    def acquire(self) -> None:
        return None
