"""The platform read when a worker process starts (worker/ops/warm_up.py)."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import pytest

from tests.unit.fakes import PLATFORM_ID, FakeStripe, a_world
from worker.adapters.facts_cache import CachedStripe
from worker.adapters.rate_budget import Priority, effective_priority
from worker.domain.errors import DebitWorkerError, OperatorActionNeeded, TransientFailure
from worker.domain.types import PlatformFacts
from worker.ops.warm_up import read_platform, warm_up


@dataclass
class FailingPlatformReads(FakeStripe):
    """A Stripe whose platform reads raise the listed errors, then answer."""

    failures: list[DebitWorkerError] = field(default_factory=list)

    def platform(self) -> PlatformFacts:
        if self.failures:
            self.reads.append(("platform", "failed"))
            raise self.failures.pop(0)
        return super().platform()


def test_the_platform_read_at_start_is_the_one_every_debit_then_uses(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a worker's cached Stripe that has read nothing yet
    stripe = FakeStripe()
    cached = CachedStripe(stripe, ttl_seconds=300)
    # When the process starts, and then a debit asks for the platform
    with caplog.at_level(logging.INFO, logger="worker.ops.warm_up"):
        read_platform(cached)
    facts = cached.platform()

    # Then Stripe was asked once, before the debit, and the log names the platform
    assert stripe.reads == [("platform", PLATFORM_ID)]
    assert facts.country == "US"
    assert f"Stripe platform {PLATFORM_ID}, country US" in caplog.messages


def test_a_refused_key_is_an_error_in_the_log_at_start_and_stops_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a Stripe that refuses the configured key
    stripe = FailingPlatformReads(failures=[OperatorActionNeeded("401: invalid API key")])
    # When the process starts
    with caplog.at_level(logging.INFO, logger="worker.ops.warm_up"):
        read_platform(CachedStripe(stripe, ttl_seconds=300))

    # Then the log says so as an error naming the key (no exception escapes the start)
    [record] = [r for r in caplog.records if r.name == "worker.ops.warm_up"]
    assert record.levelno == logging.ERROR
    assert "refused the configured API key" in record.getMessage()
    assert "401: invalid API key" in record.getMessage()


def test_a_failed_read_at_start_is_a_warning_and_the_first_debit_reads_again(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a Stripe that is unreachable for the first read
    stripe = FailingPlatformReads(failures=[TransientFailure("connection refused")])
    cached = CachedStripe(stripe, ttl_seconds=300)
    # When the process starts, and then a debit asks for the platform
    with caplog.at_level(logging.INFO, logger="worker.ops.warm_up"):
        read_platform(cached)
    facts = cached.platform()

    # Then the start logged a warning, and the debit's read went to Stripe and succeeded
    [record] = [r for r in caplog.records if r.name == "worker.ops.warm_up"]
    assert record.levelno == logging.WARNING
    assert "connection refused" in record.getMessage()
    assert stripe.reads == [("platform", "failed"), ("platform", PLATFORM_ID)]
    assert facts.account_id == PLATFORM_ID


@dataclass
class PriorityRecordingStripe(FakeStripe):
    """A Stripe that records the priority a platform read would take from the budget."""

    priorities: list[Priority] = field(default_factory=list)

    def platform(self) -> PlatformFacts:
        self.priorities.append(effective_priority(Priority.UNBLOCKS_DEBIT))
        return super().platform()


def test_the_platform_read_at_start_takes_a_background_token_and_a_debits_does_not() -> None:
    # Given a Stripe recording the priority of each platform read
    stripe = PriorityRecordingStripe()
    # When the process starts, and then a debit reads the platform itself
    read_platform(stripe)
    stripe.platform()
    # Then the start's read went in the background, leaving the budget to debits; the
    # debit's read kept the priority of a read that unblocks a debit
    assert stripe.priorities == [Priority.BACKGROUND, Priority.UNBLOCKS_DEBIT]


def test_after_the_platform_read_the_stripe_pool_opens_its_connections(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a process's services whose Stripe pool would open 24 connections
    world = a_world(tmp_path)
    opened_after: list[list[tuple[str, str]]] = []

    def open_connections() -> int:
        opened_after.append(list(world.stripe.reads))
        return 24

    services = replace(world.services(), open_stripe_connections=open_connections)
    # When the process warms up
    with caplog.at_level(logging.INFO, logger="worker.ops.warm_up"):
        warm_up(services)
    # Then the pool was opened once, after the platform read, and the log says how many
    assert opened_after == [[("platform", PLATFORM_ID)]]
    assert "24 Stripe connections open" in caplog.messages
