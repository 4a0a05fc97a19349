"""Stripe's request budget shared by every worker process and host, kept in Redis.

One Lua script reserves the next free slot of a schedule (GCRA): `rate` slots per second,
up to `burst` at once after a quiet spell. The caller sleeps until its slot: one Redis round
trip per token, no polling. Redis's `TIME` is the only clock, so hosts' clocks may disagree.

Reconciliation reads take low-priority tokens (`acquire_spare`): a second script reserves a
slot only while the schedule holds at least half the burst saved up, else answers how long
until it might; the caller sleeps that long and asks again, since debits may have reserved
the slots meanwhile.

Fails safe: while Redis is away, each process falls back to a local bucket at
`rate / processes` (the processes sharing the budget), so together they stay under Stripe's
limit; Redis is tried again after `retry_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.adapters.rate_budget import LocalTokenBucket, RateBudget, spare_mark
from worker.ops import metrics

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "debit-worker:stripe-budget:"

# KEYS[1]: the schedule (when the next slot is free, Redis time); ARGV: interval (s), burst.
# The key outlives its last reservation by a minute, then an idle budget starts full again.
# Returns how long the caller waits for its slot, in seconds (a string: Lua numbers
# returned to Redis are truncated to integers).
_RESERVE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(free, now - (burst - 1) * interval)
local ttl = math.ceil((slot + interval - now) * 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', ttl)
return string.format('%.6f', math.max(0, slot - now))
"""

# The same schedule; ARGV[3]: the tokens that must be saved up before a spare read takes one.
# Saved up at `now`: 1 + (now - slot) / interval, at most `burst`. Returns {1, "0"} when a
# slot was taken (it is free now), else {0, seconds until the mark could be reached}.
_SPARE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local mark = now - (tonumber(ARGV[3]) - 1) * interval
local free = tonumber(redis.call('GET', KEYS[1]) or '0')
local slot = math.max(free, now - (burst - 1) * interval)
if slot > mark then
  return {0, string.format('%.6f', slot - mark)}
end
local ttl = math.ceil((slot + interval - now) * 1000) + 60000
redis.call('SET', KEYS[1], string.format('%.6f', slot + interval), 'PX', ttl)
return {1, '0'}
"""

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)


def budget_key(api_key: str) -> str:
    """One schedule per Stripe key (Stripe limits per account), without storing the key."""
    return KEY_PREFIX + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RedisRateBudget:
    """A RateBudget shared through Redis; a local bucket stands in while Redis is away."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        rate: float,
        *,
        burst: float | None = None,
        processes: int = 1,
        retry_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate <= 0 or processes < 1:
            raise ValueError("rate must be positive and processes at least 1")
        self._client = client
        self._key = key
        self._interval = 1.0 / rate
        self._burst = burst if burst is not None else max(1.0, rate / 10)
        self._script = client.register_script(_RESERVE)
        self._spare_script = client.register_script(_SPARE)
        self.fallback_rate = rate / processes
        self._fallback: RateBudget = LocalTokenBucket(self.fallback_rate, sleep=sleep, clock=clock)
        self._retry_seconds = retry_seconds
        self._sleep = sleep
        self._clock = clock
        self._down_until = 0.0
        self._lock = threading.Lock()

    @classmethod
    def from_url(
        cls,
        url: str,
        key: str,
        rate: float,
        *,
        burst: float | None = None,
        processes: int = 1,
        retry_seconds: float = 5.0,
    ) -> RedisRateBudget:
        # One immediate retry covers a pooled connection Redis closed; no backoff (the
        # client's default waits seconds): the fallback is the plan for a Redis that is away.
        client = redis.Redis.from_url(
            url,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        return cls(client, key, rate, burst=burst, processes=processes, retry_seconds=retry_seconds)

    def _shared(self) -> bool:
        """False while the local fallback is in use."""
        return self._clock() >= self._down_until

    def acquire(self) -> None:
        if not self._shared():
            self._fallback.acquire()
            return
        try:
            wait = float(self._script(keys=[self._key], args=[self._interval, self._burst]))
        except REDIS_ERRORS as exc:
            self._went_away(exc)
            self._fallback.acquire()
            return
        if wait > 0:
            self._sleep(wait)

    def acquire_spare(self) -> None:
        mark = spare_mark(self._burst)
        while self._shared():
            try:
                taken, wait = self._spare_script(
                    keys=[self._key], args=[self._interval, self._burst, mark]
                )
            except REDIS_ERRORS as exc:
                self._went_away(exc)
                break
            if int(taken):
                return
            self._sleep(float(wait))
        self._fallback.acquire_spare()

    def _went_away(self, exc: Exception) -> None:
        with self._lock:
            first = self._shared()
            self._down_until = self._clock() + self._retry_seconds
        if first:
            metrics.rate_budget_redis_unreachable()
            log.warning(
                "rate budget: Redis unreachable (%s); this process allows itself %.1f "
                "requests/s locally and tries Redis again in %.1f s",
                exc,
                self.fallback_rate,
                self._retry_seconds,
            )
