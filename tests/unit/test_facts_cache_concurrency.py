"""The account cache under concurrency: a cold start costs one Stripe read per account."""

from __future__ import annotations

import threading
import time

from worker.adapters.facts_cache import CachedStripe
from worker.domain.types import AccountFacts, PlatformFacts

from .fakes import FakeStripe

ACCOUNT = "acct_1ExpressUS00000001"


class SlowStripe(FakeStripe):
    """Reads take a while, as Stripe's do, so threads that miss together overlap."""

    def account(self, account_id: str) -> AccountFacts:
        time.sleep(0.05)
        return super().account(account_id)

    def platform(self) -> PlatformFacts:
        time.sleep(0.05)
        return super().platform()


def test_threads_missing_the_same_account_together_send_one_read() -> None:
    # Given an empty cache in front of a Stripe whose reads take 50 ms
    stripe = SlowStripe()
    stripe.add_account(AccountFacts(ACCOUNT, "US", "usd", "express", "application"))
    cache = CachedStripe(stripe, ttl_seconds=300)
    start = threading.Barrier(32)

    def debit() -> None:
        start.wait()
        assert cache.account(ACCOUNT).default_currency == "usd"
        assert cache.platform().country == "US"

    # When 32 threads need the account's and the platform's facts at the same moment
    threads = [threading.Thread(target=debit) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    # Then Stripe was asked once for each
    assert stripe.reads.count(("account", ACCOUNT)) == 1
    assert sum(1 for kind, _ in stripe.reads if kind == "platform") == 1
