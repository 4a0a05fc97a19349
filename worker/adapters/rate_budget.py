"""Stripe's request budget: every Stripe call takes a token first, so the worker slows itself
down instead of collecting 429s. Per process here; `worker.adapters.redis_budget` shares one
budget between every process and host through Redis, with the same rules (`decide`).

Stripe limits an account twice: globally (100 requests/s live, 25 in test mode) and per
endpoint (25/s unless Stripe raised it; each operation is its own endpoint). So a call takes
a token from the global schedule and from its endpoint class's schedule, both at once.

Priorities: a debit's own call (the charge) reserves the next free slot and sleeps until it;
reads that unblock a debit, and background reads (reconciliation, warm-up), take a token
only while both schedules hold a mark saved up (a quarter, then half the burst), else ask
again when they might, so at full debit load the charges go first.

A 429 whose `Stripe-Rate-Limited-Reason` names a limit pushes that schedule forward: nobody
under that limit goes for a second (or Stripe's Retry-After). One that names none holds
nothing back (the call itself is retried with backoff).

Each schedule is a GCRA: `free` is when its next slot is free; up to `burst` slots are saved
up after a quiet spell, so the tokens held at `now` are 1 + (now - free) / interval, at most
`burst`.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Literal, Protocol

# Every endpoint the gateway calls, and the class whose limit it counts against. Stripe
# limits each operation separately; the platform read and a connected account's read share
# one class (the platform is read once per process).
ENDPOINT_CLASS: Final[Mapping[str, str]] = {
    "POST /v1/charges": "charges",
    "GET /v1/account": "account_reads",
    "GET /v1/accounts/{id}": "account_reads",
    "GET /v1/balance": "balance_reads",
    "GET /v1/refunds/{id}": "refund_reads",
    "GET /v1/charges/{id}": "charge_reads",
    "GET /v1/charges": "charge_lists",
    "GET /v1/events": "event_lists",
}
ENDPOINT_CLASSES: Final = tuple(dict.fromkeys(ENDPOINT_CLASS.values()))
DEFAULT_ENDPOINT_RATE: Final = 25.0  # Stripe's per-endpoint limit unless it raised one
GLOBAL: Final = "global"

# Reasons Stripe gives for a 429 that name one endpoint's limit; the global ones back off the
# global schedule; an unknown one, or none at all, backs off nothing (`backed_off`).
ENDPOINT_REASONS: Final = frozenset({"endpoint-rate", "endpoint-concurrency", "resource-specific"})
KNOWN_REASONS: Final = ENDPOINT_REASONS | {"global-rate", "global-concurrency"}
PENALTY_SECONDS: Final = 1.0
MAX_PENALTY_SECONDS: Final = 60.0  # a Retry-After beyond this is not believed


class Priority(IntEnum):
    DEBIT = 0  # a debit's own call: the charge
    UNBLOCKS_DEBIT = 1  # reads a debit waits for: account, refund, balance
    BACKGROUND = 2  # reconciliation and the warm-up read


def endpoint_class(endpoint: str) -> str:
    return ENDPOINT_CLASS[endpoint]


def mark(priority: int, burst: float) -> float:
    """Tokens a schedule must hold before a call of `priority` takes one."""
    if priority <= Priority.DEBIT:
        return 1.0
    return max(1.0, burst / (4 if priority == Priority.UNBLOCKS_DEBIT else 2))


def backed_off(reason: str | None) -> Literal["endpoint", "global"] | None:
    """Which limit a 429 names: its class's for the endpoint reasons, the global one for the
    global reasons. None for no reason or one not known: the header is optional, and holding
    every process back a second on a 429 that names no limit would let a few stray ones (a
    lock, a blip) stall the whole fleet; such a request is retried with backoff, as before."""
    if reason in ENDPOINT_REASONS:
        return "endpoint"
    return "global" if reason in KNOWN_REASONS else None


def schedule_backed_off(endpoint_class: str, reason: str | None) -> str | None:
    """The schedule a 429 of `endpoint_class` for `reason` pushes: the class's, GLOBAL, or
    None (it names no limit)."""
    limit = backed_off(reason)
    if limit is None:
        return None
    return endpoint_class if limit == "endpoint" else GLOBAL


def penalty_seconds(retry_after: float | None) -> float:
    """How far a 429 pushes its schedule: a second, or Stripe's Retry-After if longer."""
    return min(MAX_PENALTY_SECONDS, max(PENALTY_SECONDS, retry_after or 0.0))


_FLOOR: ContextVar[Priority] = ContextVar("stripe_budget_priority_floor", default=Priority.DEBIT)


@contextmanager
def in_background() -> Iterator[None]:
    """Stripe calls made inside take background priority, whatever they are (the warm-up's
    platform read, which on a debit's path unblocks it)."""
    token = _FLOOR.set(Priority.BACKGROUND)
    try:
        yield
    finally:
        _FLOOR.reset(token)


def effective_priority(priority: Priority) -> Priority:
    return max(priority, _FLOOR.get())


class RateBudget(Protocol):
    def acquire(self, endpoint_class: str, priority: Priority) -> None:
        """Block until one Stripe request of `endpoint_class` may be sent."""

    def rate_limited(
        self, endpoint_class: str, reason: str | None, retry_after: float | None
    ) -> None:
        """Stripe answered 429 for `reason`: back off the limit it names."""


# --- the rules, shared by the local budget and (in Lua) the Redis one ------------------------


@dataclass(frozen=True)
class Limit:
    interval: float  # seconds per request
    burst: float  # slots saved up at most

    @classmethod
    def of(cls, rate: float, burst_seconds: float) -> Limit:
        if rate <= 0 or burst_seconds <= 0:
            raise ValueError("rate and burst_seconds must be positive")
        return cls(1.0 / rate, max(1.0, rate * burst_seconds))

    def slot(self, free: float, at: float) -> float:
        """The slot a request at `at` would get: `free`, or earlier after a quiet spell."""
        return max(free, at - (self.burst - 1) * self.interval)

    def lag(self, free: float, now: float, priority: int) -> float:
        """How long until this schedule holds the mark of `priority` (<= 0: it does)."""
        return self.slot(free, now) - (now - (mark(priority, self.burst) - 1) * self.interval)


# Waits shorter than this are float rounding, not waits (a microsecond: Redis's resolution).
EPSILON: Final = 1e-6
TAKEN: Final = 1  # sleep `wait`, then send
CLASS_HELD: Final = 2  # a class slot is reserved: sleep `wait`, then ask for the global one
NOT_YET: Final = 0  # nothing taken: sleep `wait`, then ask again


@dataclass(frozen=True)
class Decision:
    verdict: int
    wait: float
    global_free: float
    class_free: float


def decide(
    now: float,
    limits: tuple[Limit, Limit],
    global_free: float,
    class_free: float,
    priority: int,
    *,
    class_held: bool = False,
) -> Decision:
    """One request's answer from the global and its class's schedule (`*_free`).

    A charge whose class is busy reserves its class slot alone and asks for the global slot
    once that comes: reserving the global slot too would hold global capacity, which every
    other class needs, for as long as the class queue is. Otherwise both are reserved at
    the moment the request goes, each charged as of then. Lower priorities take a token now
    from both schedules, or nothing.
    """
    glimit, climit = limits
    if priority > Priority.DEBIT:
        wait = max(glimit.lag(global_free, now, priority), climit.lag(class_free, now, priority))
        if wait > EPSILON:
            return Decision(NOT_YET, wait, global_free, class_free)
        return Decision(
            TAKEN,
            0.0,
            glimit.slot(global_free, now) + glimit.interval,
            climit.slot(class_free, now) + climit.interval,
        )
    if not class_held:
        class_slot = climit.slot(class_free, now)
        if class_slot > now + EPSILON:
            return Decision(CLASS_HELD, class_slot - now, global_free, class_slot + climit.interval)
    at = max(now, glimit.slot(global_free, now))
    at = now if at - now <= EPSILON else at
    taken_class = class_free if class_held else climit.slot(class_free, at) + climit.interval
    return Decision(TAKEN, at - now, glimit.slot(global_free, at) + glimit.interval, taken_class)


def limits_of(
    rate: float, endpoint_rates: Mapping[str, float], burst_seconds: float
) -> dict[str, Limit]:
    """The global schedule's limit and every class's (Stripe's default 25/s where not given)."""
    unknown = sorted(set(endpoint_rates) - set(ENDPOINT_CLASSES))
    if unknown:
        raise ValueError(f"unknown endpoint classes {unknown}: use {', '.join(ENDPOINT_CLASSES)}")
    limits = {GLOBAL: Limit.of(rate, burst_seconds)}
    for name in ENDPOINT_CLASSES:
        limits[name] = Limit.of(endpoint_rates.get(name, DEFAULT_ENDPOINT_RATE), burst_seconds)
    return limits


class LocalRateBudget:
    """This process's budget: the global schedule and one per endpoint class, under one lock.
    Classes not given in `endpoint_rates` get Stripe's default 25/s."""

    def __init__(
        self,
        rate: float,
        endpoint_rates: Mapping[str, float] | None = None,
        *,
        burst_seconds: float = 0.5,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._limits = limits_of(rate, endpoint_rates or {}, burst_seconds)
        self._free = dict.fromkeys(self._limits, -math.inf)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()

    @property
    def rates(self) -> dict[str, float]:
        """Requests per second of every schedule: `global` and each endpoint class."""
        return {name: 1.0 / limit.interval for name, limit in self._limits.items()}

    def acquire(self, endpoint_class: str, priority: Priority) -> None:
        limits = (self._limits[GLOBAL], self._limits[endpoint_class])
        held = False
        while True:
            with self._lock:
                decision = decide(
                    self._clock(),
                    limits,
                    self._free[GLOBAL],
                    self._free[endpoint_class],
                    priority,
                    class_held=held,
                )
                self._free[GLOBAL] = decision.global_free
                self._free[endpoint_class] = decision.class_free
            if decision.wait > 0:
                self._sleep(decision.wait)
            if decision.verdict == TAKEN:
                return
            held = held or decision.verdict == CLASS_HELD

    def rate_limited(
        self, endpoint_class: str, reason: str | None, retry_after: float | None
    ) -> None:
        name = schedule_backed_off(endpoint_class, reason)
        if name is None:
            return
        with self._lock:
            until = self._clock() + penalty_seconds(retry_after)
            self._free[name] = max(self._free[name], until)


class Unlimited:
    """No budget: for tests and benchmarks that measure something else."""

    # The protocol's signatures, with nothing to do.
    def acquire(self, endpoint_class: str, priority: Priority) -> None:  # noqa: ARG002
        return None

    def rate_limited(
        self,
        endpoint_class: str,  # noqa: ARG002
        reason: str | None,  # noqa: ARG002
        retry_after: float | None,  # noqa: ARG002
    ) -> None:
        return None
