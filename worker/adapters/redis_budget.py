"""Stripe's request budget shared by every worker process and host, kept in Redis.

The same rules as the local budget (`worker.adapters.rate_budget.decide`), in one Lua script
over two keys: the global schedule of the Stripe key and its endpoint class's schedule, so
a call takes its two tokens atomically. The caller sleeps until its slot: one Redis round
trip per token, two for a charge whose class is busy; a lower priority that finds too little
saved up is told how long until there might be enough, sleeps, and asks again. Redis's `TIME`
is the only clock, so hosts' clocks may disagree.

A 429 pushes the schedule it names to at least now + the penalty (a second, or Stripe's
Retry-After): every process backs off at once. Slots already handed out are kept.

Fails safe: while Redis is away, each process falls back to a local budget with every rate
divided by `processes` (the processes sharing the budget), so together they stay under
Stripe's limits; Redis is tried again after `retry_seconds`.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import Final

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from worker.adapters.rate_budget import (
    CLASS_HELD,
    ENDPOINT_CLASSES,
    GLOBAL,
    TAKEN,
    LocalRateBudget,
    Priority,
    limits_of,
    mark,
    penalty_seconds,
    schedule_backed_off,
)
from worker.ops import metrics

log = logging.getLogger(__name__)

KEY_PREFIX: Final = "debit-worker:stripe-budget:"

# KEYS: the global schedule, the class's schedule (each: when its next slot is free, Redis
# time). ARGV[1]: 'debit' (reserve), 'held' (the class slot is reserved: the global one
# only) or 'mark' (take now if both hold their marks, else nothing); then interval, burst and
# mark of the global schedule, then of the class's. A key outlives its last reservation by a
# minute, then an idle schedule starts full again. Returns {verdict, seconds to wait} (a
# string: Lua numbers returned to Redis are truncated to integers); verdicts as
# rate_budget's TAKEN, CLASS_HELD, NOT_YET.
_ACQUIRE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local mode = ARGV[1]
local gi, gb, gm = tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4])
local ci, cb, cm = tonumber(ARGV[5]), tonumber(ARGV[6]), tonumber(ARGV[7])
local g = tonumber(redis.call('GET', KEYS[1]) or '0')
local c = tonumber(redis.call('GET', KEYS[2]) or '0')
local function slot(free, at, interval, burst)
  return math.max(free, at - (burst - 1) * interval)
end
local function keep(key, free)
  local ttl = math.ceil((free - now) * 1000) + 60000
  redis.call('SET', key, string.format('%.6f', free), 'PX', ttl)
end
if mode == 'mark' then
  local lag = math.max(slot(g, now, gi, gb) - (now - (gm - 1) * gi),
                       slot(c, now, ci, cb) - (now - (cm - 1) * ci))
  if lag > 0.000001 then
    return {0, string.format('%.6f', lag)}
  end
  keep(KEYS[1], slot(g, now, gi, gb) + gi)
  keep(KEYS[2], slot(c, now, ci, cb) + ci)
  return {1, '0'}
end
if mode == 'debit' then
  local cs = slot(c, now, ci, cb)
  if cs > now + 0.000001 then
    keep(KEYS[2], cs + ci)
    return {2, string.format('%.6f', cs - now)}
  end
end
local at = math.max(now, slot(g, now, gi, gb))
if at - now <= 0.000001 then
  at = now
end
keep(KEYS[1], slot(g, at, gi, gb) + gi)
if mode == 'debit' then
  keep(KEYS[2], slot(c, at, ci, cb) + ci)
end
return {1, string.format('%.6f', at - now)}
"""

# KEYS[1]: a schedule; ARGV[1]: seconds. Its next slot becomes at least now + seconds.
_PENALIZE: Final = """
local t = redis.call('TIME')
local now = tonumber(t[1]) + tonumber(t[2]) / 1000000
local free = now + tonumber(ARGV[1])
if tonumber(redis.call('GET', KEYS[1]) or '0') < free then
  local ttl = math.ceil((free - now) * 1000) + 60000
  redis.call('SET', KEYS[1], string.format('%.6f', free), 'PX', ttl)
end
return 1
"""

REDIS_ERRORS = (redis.ConnectionError, redis.TimeoutError)

# A process's connections to Redis, all opened at start: a token holds one for a fraction of
# a millisecond, so a few serve every thread (one that finds none free waits up to a second,
# then counts Redis as away). A pool that opens on demand would creep up for as long as the
# process runs, each time more threads than ever before asked at the same instant.
CONNECTIONS: Final = 8


def open_pool(pool: redis.BlockingConnectionPool) -> int:
    """Open every connection of `pool` now; returns how many. A Redis that is away at start
    is not an error here: its connections open when it is back, and the budget falls back
    on its first call as it would later."""
    held: list[redis.connection.AbstractConnection] = []
    try:
        while len(held) < pool.max_connections:
            held.append(pool.get_connection())  # type: ignore[no-untyped-call]
    except REDIS_ERRORS as exc:
        log.info("rate budget: Redis not reachable at start (%s); connecting when needed", exc)
    finally:
        for connection in held:
            pool.release(connection)  # type: ignore[no-untyped-call]
    return len(held)


def budget_key(api_key: str) -> str:
    """The global schedule of a Stripe key (Stripe limits per account), without storing the
    key; each class's schedule is this key + `:` + the class."""
    return KEY_PREFIX + hashlib.sha256(api_key.encode()).hexdigest()[:16]


class RedisRateBudget:
    """A RateBudget shared through Redis; a local budget stands in while Redis is away."""

    def __init__(
        self,
        client: redis.Redis,
        key: str,
        rate: float,
        endpoint_rates: Mapping[str, float] | None = None,
        *,
        burst_seconds: float = 0.5,
        processes: int = 1,
        retry_seconds: float = 5.0,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if processes < 1:
            raise ValueError("processes must be at least 1")
        rates = dict(endpoint_rates or {})
        self._limits = limits_of(rate, rates, burst_seconds)
        self._keys = {GLOBAL: key, **{name: f"{key}:{name}" for name in ENDPOINT_CLASSES}}
        self._acquire_script = client.register_script(_ACQUIRE)
        self._penalize_script = client.register_script(_PENALIZE)
        self.fallback_rates = {
            name: 1.0 / limit.interval / processes for name, limit in self._limits.items()
        }
        self._fallback = LocalRateBudget(
            self.fallback_rates[GLOBAL],
            {name: self.fallback_rates[name] for name in ENDPOINT_CLASSES},
            burst_seconds=burst_seconds,
            sleep=sleep,
            clock=clock,
        )
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
        endpoint_rates: Mapping[str, float] | None = None,
        *,
        burst_seconds: float = 0.5,
        processes: int = 1,
        retry_seconds: float = 5.0,
    ) -> RedisRateBudget:
        # One immediate retry covers a pooled connection Redis closed; no backoff (the
        # client's default waits seconds): the fallback is the plan for a Redis that is away.
        pool = redis.BlockingConnectionPool.from_url(
            url,
            max_connections=CONNECTIONS,
            timeout=1.0,
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            health_check_interval=30,
            retry=Retry(NoBackoff(), 1),
        )
        open_pool(pool)
        return cls(
            redis.Redis(connection_pool=pool),
            key,
            rate,
            endpoint_rates,
            burst_seconds=burst_seconds,
            processes=processes,
            retry_seconds=retry_seconds,
        )

    def _shared(self) -> bool:
        """False while the local fallback is in use."""
        return self._clock() >= self._down_until

    def acquire(self, endpoint_class: str, priority: Priority) -> None:
        glimit, climit = self._limits[GLOBAL], self._limits[endpoint_class]
        keys = [self._keys[GLOBAL], self._keys[endpoint_class]]
        held = False
        while self._shared():
            mode = "mark" if priority > Priority.DEBIT else ("held" if held else "debit")
            args: list[str | float] = [
                mode,
                glimit.interval,
                glimit.burst,
                mark(priority, glimit.burst),
                climit.interval,
                climit.burst,
                mark(priority, climit.burst),
            ]
            try:
                verdict, wait = self._acquire_script(keys=keys, args=args)
            except REDIS_ERRORS as exc:
                self._went_away(exc)
                break
            if float(wait) > 0:
                self._sleep(float(wait))
            if int(verdict) == TAKEN:
                return
            held = held or int(verdict) == CLASS_HELD
        self._fallback.acquire(endpoint_class, priority)

    def rate_limited(
        self, endpoint_class: str, reason: str | None, retry_after: float | None
    ) -> None:
        name = schedule_backed_off(endpoint_class, reason)
        if name is None:
            return
        if self._shared():
            try:
                self._penalize_script(keys=[self._keys[name]], args=[penalty_seconds(retry_after)])
            except REDIS_ERRORS as exc:
                self._went_away(exc)
            else:
                return
        self._fallback.rate_limited(endpoint_class, reason, retry_after)

    def _went_away(self, exc: Exception) -> None:
        with self._lock:
            first = self._shared()
            self._down_until = self._clock() + self._retry_seconds
        if first:
            metrics.rate_budget_redis_unreachable()
            log.warning(
                "rate budget: Redis unreachable (%s); this process allows itself %.1f "
                "requests/s locally (each endpoint class its share too) and tries Redis again "
                "in %.1f s",
                exc,
                self.fallback_rates[GLOBAL],
                self._retry_seconds,
            )
