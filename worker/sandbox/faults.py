"""Faults the sandbox injects: latency, 429s, 500s, dropped connections, rate limits (the
global one and one per endpoint, as Stripe's), account debits answered with a charge that is
not a plain success, and debits carried out although they were answered 500 (at once, or
later).

`Faults` is the configuration (CLI flags, the runner, `POST /_sandbox/faults`);
`FaultInjector` draws from it with its own seeded random generator, so a `random_seed`
gives the same fault sequence for the same request sequence.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections import Counter
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

FaultKind = Literal[
    "rate_limit",
    "server_error",
    "drop_before",
    "drop_after",
    "executed_server_error",
    "executed_late",
]
# How an account debit Stripe accepts is answered instead of a succeeded charge of the money
# asked for. pending/failed: the payment really is pending (the money waits in the platform's
# pending balance) or failed (nothing moved). other_*: the debit is made as asked, but the
# answer reports another amount, currency or source account (GET /v1/charges/{id} tells the
# truth).
ChargeAnswer = Literal["pending", "failed", "other_amount", "other_currency", "other_source"]
OTHER_SOURCE = "acct_1NotTheSource000001"
FRONT_KINDS: frozenset[str] = frozenset({"rate_limit"})
# Faults that only an account debit (POST /v1/charges) can carry: a read never draws them,
# and at the head of `script` they wait for the next POST.
WRITE_KINDS: frozenset[str] = frozenset({"executed_server_error", "executed_late"})
# An endpoint as the sandbox counts requests (`GET /_sandbox/state`): method and route.
ENDPOINT = re.compile(r"(GET|POST|DELETE) /v1/\S+")
Z_99 = 2.3263478740408408  # standard normal quantile at 0.99


class Faults(BaseModel):
    """What goes wrong, and how often. All shares are probabilities per eligible request."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    latency_ms: float = Field(0.0, ge=0, description="fixed delay added to every request")
    latency_p50_ms: float | None = Field(None, gt=0, description="lognormal delay: median")
    latency_p99_ms: float | None = Field(None, gt=0, description="lognormal delay: 99th pct")
    rate_limit_share: float = Field(0.0, ge=0, le=1, description="429 rate_limit, not stored")
    server_error_share: float = Field(0.0, ge=0, le=1, description="500 api_error, stored")
    drop_before_share: float = Field(0.0, ge=0, le=1, description="connection cut, no effect")
    drop_after_share: float = Field(0.0, ge=0, le=1, description="effect done, response lost")
    executed_server_error_share: float = Field(
        0.0, ge=0, le=1, description="debit carried out, answered 500 api_error, stored"
    )
    executed_late_share: float = Field(
        0.0, ge=0, le=1, description="answered 500 (stored), debit carried out later"
    )
    executed_late_seconds: float = Field(
        30.0, ge=0, description="sandbox-clock delay before an executed_late debit is made"
    )
    script: tuple[FaultKind, ...] = Field(
        (), description="faults for the next eligible requests, in order, before random draws"
    )
    charge_answers: tuple[ChargeAnswer, ...] = Field(
        (), description="how the next account debits Stripe accepts are answered, in order"
    )
    writes_only: bool = Field(False, description="inject only into POSTs (latency excepted)")
    rate_limit_rps: float | None = Field(None, gt=0, description="token bucket; 25 = test mode")
    endpoint_rate_limits: dict[str, float] = Field(
        default_factory=dict,
        description='a token bucket per endpoint ("POST /v1/charges", "*" for every other one)',
    )
    random_seed: int | None = None

    @model_validator(mode="after")
    def _consistent(self) -> Faults:
        shares = (
            self.rate_limit_share
            + self.server_error_share
            + self.drop_before_share
            + self.drop_after_share
            + self.executed_server_error_share
            + self.executed_late_share
        )
        if shares > 1:
            raise ValueError("fault shares add up to more than 1")
        for endpoint, rate in self.endpoint_rate_limits.items():
            if endpoint != "*" and not ENDPOINT.fullmatch(endpoint):
                raise ValueError(
                    f"endpoint_rate_limits: {endpoint!r} is not an endpoint: write it as "
                    '"POST /v1/charges" or "GET /v1/charges/{charge}" (or "*": every other one)'
                )
            if not rate > 0:
                raise ValueError(f"endpoint_rate_limits: the rate of {endpoint} must be positive")
        if (self.latency_p50_ms is None) != (self.latency_p99_ms is None):
            raise ValueError("give latency_p50_ms and latency_p99_ms together")
        if (
            self.latency_p50_ms
            and self.latency_p99_ms
            and self.latency_p99_ms < self.latency_p50_ms
        ):
            raise ValueError("latency_p99_ms must be at least latency_p50_ms")
        return self


class TokenBucket:
    """Stripe-style limiter: `rate` requests per second, bursts up to `rate`."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = max(rate, 1.0)
        self.tokens = self.capacity
        self.updated = time.monotonic()

    def holds_one(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.capacity, self.tokens + (now - self.updated) * self.rate)
        self.updated = now
        return self.tokens >= 1

    def take(self) -> bool:
        if self.holds_one():
            self.tokens -= 1
            return True
        return False


class FaultInjector:
    def __init__(self, faults: Faults) -> None:
        self.injected: Counter[str] = Counter()
        self.configure(faults)

    def configure(self, faults: Faults) -> None:
        self.faults = faults
        self._random = random.Random(faults.random_seed)  # noqa: S311 - not for secrets
        self._script = list(faults.script)
        self._answers = list(faults.charge_answers)
        self._bucket = TokenBucket(faults.rate_limit_rps) if faults.rate_limit_rps else None
        self._endpoint_buckets: dict[str, TokenBucket] = {}

    def admit(self, endpoint: str) -> str | None:
        """The rate limiters' verdict on a request to `endpoint` (`POST /v1/charges`): None,
        or the `Stripe-Rate-Limited-Reason` of its 429, counted as a `rate_limit_bucket`
        (global) or `rate_limit_endpoint` fault. A refused request spends no token."""
        own = self._endpoint_bucket(endpoint)
        if self._bucket is not None and not self._bucket.holds_one():
            self.injected["rate_limit_bucket"] += 1
            return "global-rate"
        if own is not None and not own.holds_one():
            self.injected["rate_limit_endpoint"] += 1
            return "endpoint-rate"
        for bucket in (self._bucket, own):
            if bucket is not None:
                bucket.take()
        return None

    def _endpoint_bucket(self, endpoint: str) -> TokenBucket | None:
        limits = self.faults.endpoint_rate_limits
        rate = limits.get(endpoint, limits.get("*"))
        if rate is None:
            return None
        if endpoint not in self._endpoint_buckets:
            self._endpoint_buckets[endpoint] = TokenBucket(rate)
        return self._endpoint_buckets[endpoint]

    def front_fault(self, is_write: bool) -> FaultKind | None:
        """A fault decided before the request reaches idempotency: only 429s."""
        return self._draw(is_write, front=True)

    def execution_fault(self, is_write: bool) -> FaultKind | None:
        """A fault decided when the request executes: 500s and dropped connections, and for
        writes the debits carried out despite a 500."""
        return self._draw(is_write, front=False)

    def charge_answer(self) -> ChargeAnswer | None:
        """How the next accepted account debit is answered (None: as a plain success); it
        is used up by `charge_answered`, once the debit was accepted."""
        return self._answers[0] if self._answers else None

    def charge_answered(self) -> None:
        if self._answers:
            self.injected[f"charge_{self._answers.pop(0)}"] += 1

    def latency_seconds(self) -> float:
        faults = self.faults
        delay = faults.latency_ms
        if faults.latency_p50_ms is not None and faults.latency_p99_ms is not None:
            mu = math.log(faults.latency_p50_ms)
            sigma = math.log(faults.latency_p99_ms / faults.latency_p50_ms) / Z_99
            delay += self._random.lognormvariate(mu, sigma)
        return delay / 1000.0

    def _draw(self, is_write: bool, *, front: bool) -> FaultKind | None:
        if self.faults.writes_only and not is_write:
            return None
        if self._script:
            head = self._script[0]
            if (head in FRONT_KINDS) != front or (head in WRITE_KINDS and not is_write):
                return None
            self._script.pop(0)
            self.injected[head] += 1
            return head
        f = self.faults
        table: list[tuple[FaultKind, float]] = (
            [("rate_limit", f.rate_limit_share)]
            if front
            else [
                ("server_error", f.server_error_share),
                ("drop_before", f.drop_before_share),
                ("drop_after", f.drop_after_share),
            ]
        )
        if is_write and not front:  # appended: the older kinds keep their draws for a seed
            table += [
                ("executed_server_error", f.executed_server_error_share),
                ("executed_late", f.executed_late_share),
            ]
        if not any(share for _, share in table):
            return None
        draw = self._random.random()
        for kind, share in table:
            if draw < share:
                self.injected[kind] += 1
                return kind
            draw -= share
        return None


def misreport(body: dict[str, Any], answer: ChargeAnswer | None) -> dict[str, Any]:
    """The charge body as an `other_*` answer reports it; other answers leave it as it is."""
    if answer == "other_amount":
        return {**body, "amount": body["amount"] + 1, "amount_captured": body["amount"] + 1}
    if answer == "other_currency":
        return {**body, "currency": "eur" if body["currency"] != "eur" else "usd"}
    if answer == "other_source":
        return {**body, "source": {"id": OTHER_SOURCE, "object": "account"}}
    return body
