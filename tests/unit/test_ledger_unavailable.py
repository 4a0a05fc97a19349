"""No free pooled connection in time is the ledger being unavailable: the attempt is retried
like any database outage, not reported as a bug."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from celery import Celery
from sqlalchemy import create_engine

from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE
from worker.bootstrap import Runtime
from worker.handlers import resume
from worker.settings import load_settings
from worker.transport.attempts import run_attempt

from .fakes import a_world


class SecondAttempt:
    """A `process_debit` task's attempt, recording the retry it schedules."""

    number = 2
    task_id = "req-1:0123456789ab"

    def __init__(self) -> None:
        self.retries: list[tuple[int, Exception]] = []

    def retry_in(self, countdown: int, error: Exception) -> str:
        self.retries.append((countdown, error))
        return "retry_scheduled"


def test_a_pool_with_no_free_connection_in_time_is_the_ledger_unavailable_and_retried(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a ledger whose only pooled connection is held elsewhere, with a short wait for one
    world = a_world(tmp_path)
    url = world.ledger.engine.url.render_as_string(hide_password=False)
    engine = create_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.05)
    world.ledger = Ledger.on(engine, world.clock)
    app = Celery("ledger-unavailable-test", broker="memory://", set_as_current=False)
    settings = load_settings(stripe_api_key="sk_test_x")
    runtime = Runtime(settings, app, factory=lambda _s, _a: world.services())
    attempt = SecondAttempt()
    # When an attempt runs while it is held
    with engine.connect(), caplog.at_level(logging.WARNING):
        outcome = run_attempt(
            attempt, runtime, "req-1", lambda svc, owner: resume("req-1", svc, owner)
        )
    # Then the next attempt is scheduled, the wait's timeout counted as the ledger unavailable
    assert outcome == "retry_scheduled"
    [(_, error)] = attempt.retries
    assert isinstance(error, LEDGER_UNAVAILABLE)
    assert any("ledger unavailable" in r.getMessage() for r in caplog.records)
    # And it is not treated as a bug (no "failed unexpectedly", no Sentry report)
    assert not any("unexpectedly" in r.getMessage() for r in caplog.records)
    # And nothing was claimed or sent to Stripe
    assert world.ledger.requests.get("req-1") is None
    assert world.stripe.payments == {}
