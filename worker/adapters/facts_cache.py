"""Reads from Stripe that change rarely, cached so each debit costs about one Stripe request.

Account facts live `ttl` seconds (bounded: at most `max_entries` accounts); the platform's
country is read once, or taken from configuration. Creating a debit is never cached.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

from worker.domain.ports import StripePort
from worker.domain.types import AccountFacts, DebitCharge, Payment, PlatformFacts, RefundFacts


class CachedStripe:
    """A StripePort that answers account and platform reads from memory when it can."""

    def __init__(
        self,
        inner: StripePort,
        *,
        ttl_seconds: float,
        platform_country: str | None = None,
        max_entries: int = 10_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._inner = inner
        self._ttl = ttl_seconds
        self._max = max_entries
        self._clock = clock
        self._lock = threading.Lock()
        self._reading: dict[str, threading.Lock] = {}
        self._platform_read = threading.Lock()
        self._accounts: OrderedDict[str, tuple[float, AccountFacts]] = OrderedDict()
        self._platform: PlatformFacts | None = (
            PlatformFacts(account_id="(configured)", country=platform_country)
            if platform_country
            else None
        )

    def platform(self) -> PlatformFacts:
        if self._platform is None:
            with self._platform_read:  # read once, even when many threads start together
                if self._platform is None:
                    self._platform = self._inner.platform()
        return self._platform

    def account(self, account_id: str) -> AccountFacts:
        hit = self._cached(account_id)
        if hit is not None:
            return hit
        # One read per account at a time: threads that miss together wait for the first
        # one's answer instead of each sending the same read (a cold start would otherwise
        # cost up to `concurrency` reads of one account).
        with self._lock:
            reading = self._reading.setdefault(account_id, threading.Lock())
        with reading:
            hit = self._cached(account_id)
            if hit is not None:
                return hit
            try:
                facts = self._inner.account(account_id)
                self._store(account_id, facts)
            finally:
                with self._lock:
                    self._reading.pop(account_id, None)
        return facts

    def _cached(self, account_id: str) -> AccountFacts | None:
        now = self._clock()
        with self._lock:
            hit = self._accounts.get(account_id)
            if hit is not None and hit[0] > now:
                self._accounts.move_to_end(account_id)
                return hit[1]
        return None

    def _store(self, account_id: str, facts: AccountFacts) -> None:
        now = self._clock()
        with self._lock:
            self._accounts[account_id] = (now + self._ttl, facts)
            self._accounts.move_to_end(account_id)
            while len(self._accounts) > self._max:
                self._accounts.popitem(last=False)

    def refund(self, refund_id: str) -> RefundFacts:
        return self._inner.refund(refund_id)

    def available_balance(self, account_id: str, currency: str) -> int:
        return self._inner.available_balance(account_id, currency)

    def create_debit(self, charge: DebitCharge) -> Payment:
        return self._inner.create_debit(charge)
