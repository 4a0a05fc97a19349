"""Low-priority tokens: reconciliation reads take the rate budget's spare capacity only, so
debits at full load keep their budget and the reads wait."""

from __future__ import annotations

import time

import pytest

from worker.adapters.rate_budget import LocalTokenBucket, RateBudget, Unlimited, spare_mark

from .fakes import FakeMonotonic


class DebitsDuringNaps(FakeMonotonic):
    """A fake clock whose first nap of a waiting reconciliation read is spent by queued
    debits taking tokens from the same bucket, as debit threads would meanwhile."""

    def __init__(self) -> None:
        super().__init__()
        self.bucket: LocalTokenBucket | None = None
        self.queued_debits = 0
        self.debits_at: list[float] = []
        self._debiting = False

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        if self._debiting or self.bucket is None:
            return
        self._debiting = True
        while self.queued_debits:
            self.bucket.acquire()
            self.debits_at.append(self.now)
            self.queued_debits -= 1
        self._debiting = False


def test_a_spare_read_on_a_full_bucket_goes_at_once_and_leaves_half_the_burst() -> None:
    # Given a full bucket of 10 per second with a burst of 4
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(10, 4, clock=clock, sleep=clock.sleep)

    # When reconciliation reads take tokens back to back
    for _ in range(3):
        bucket.acquire_spare()

    # Then the first three went at once, down to half the burst, and the fourth waits
    assert clock.slept == []
    bucket.acquire_spare()
    assert sum(clock.slept) == pytest.approx(0.1)


def test_a_debit_still_goes_at_once_after_spare_reads_took_what_they_could() -> None:
    # Given a bucket of 10 per second, burst 4, that reads have taken down to half its burst
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(10, 4, clock=clock, sleep=clock.sleep)
    for _ in range(3):
        bucket.acquire_spare()

    # When a debit asks for a token
    bucket.acquire()

    # Then it goes without waiting: the reads left it room
    assert clock.slept == []


def test_a_spare_read_waits_for_the_bucket_to_refill_to_half_its_burst() -> None:
    # Given a bucket of 10 per second, burst 4, emptied by debits
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(10, 4, clock=clock, sleep=clock.sleep)
    for _ in range(4):
        bucket.acquire()
    start = clock.now

    # When a reconciliation read asks for a token
    bucket.acquire_spare()

    # Then it went once two tokens (half the burst) had accrued, leaving one for a debit
    assert clock.now - start == pytest.approx(0.2)
    bucket.acquire()
    assert clock.now - start == pytest.approx(0.2)


def test_a_spare_read_waits_while_debits_drain_the_bucket_and_goes_after_them() -> None:
    # Given a bucket of 10 per second, burst 4, emptied, with 20 debits queued that take
    # every token as soon as it accrues
    clock = DebitsDuringNaps()
    bucket = LocalTokenBucket(10, 4, clock=clock, sleep=clock.sleep)
    clock.bucket = bucket
    for _ in range(4):
        bucket.acquire()
    clock.queued_debits = 20
    start = clock.now

    # When a reconciliation read asks for a token while they run
    bucket.acquire_spare()
    read_at = clock.now

    # Then every debit went first, at the full rate, and the read only once the bucket had
    # refilled to half its burst after the last of them
    assert len(clock.debits_at) == 20
    assert clock.debits_at[-1] - start == pytest.approx(2.0)
    assert max(clock.debits_at) <= read_at
    assert read_at - clock.debits_at[-1] == pytest.approx(0.2)


def test_a_small_burst_still_lets_a_spare_read_through_one_token_at_a_time() -> None:
    # Given a bucket of 2 per second whose burst is a single token
    clock = FakeMonotonic()
    bucket = LocalTokenBucket(2, 1, clock=clock, sleep=clock.sleep)

    # When two reconciliation reads go in a row
    bucket.acquire_spare()
    bucket.acquire_spare()

    # Then they need a whole token each (half a token is not a request), never starve
    assert spare_mark(1) == 1
    assert sum(clock.slept) == pytest.approx(0.5)


def test_without_a_budget_a_spare_read_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no request budget, in a process where any sleep is recorded instead of waited
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    budget: RateBudget = Unlimited()

    # When many reconciliation reads ask for a token
    for _ in range(1_000):
        budget.acquire_spare()

    # Then none waited
    assert slept == []
