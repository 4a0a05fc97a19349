"""After a full run (successes, refusals, forgeries, a dead letter, an unexpected error), no
configured secret appears in any log line, event, dead letter, Sentry report or exception."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from pydantic import SecretStr

from tests.integration.conftest import (
    DEFAULT_KEY,
    PRODUCER_KEYS,
    STRIPE_KEY,
    Key,
    PlainAmqp,
    kept_dead_letters,
    new_id,
    sign,
)
from tests.unit.test_observability import CapturingTransport
from worker.adapters.ledger import Ledger
from worker.ops.demo import command_body
from worker.ops.observability import (
    ScrubbingFilter,
    configure_logging,
    init_sentry,
    report_unexpected,
)
from worker.settings import Settings

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
DSN = "https://publickey1234@sentry.invalid/42"


@pytest.fixture
def sentry(settings: Settings) -> Iterator[CapturingTransport]:
    capturing = CapturingTransport()
    configured = settings.model_copy(update={"sentry_dsn": SecretStr(DSN)})
    assert init_sentry(configured, transport=capturing)
    yield capturing
    sentry_sdk.get_client().close()
    sentry_sdk.init()


@pytest.fixture
def worker_logging(settings: Settings) -> Iterator[None]:
    """Logging as `debit-worker run` configures it (caplog's handler included)."""
    configure_logging(settings.model_copy(update={"sentry_dsn": SecretStr(DSN)}))
    yield
    for handler in logging.getLogger().handlers:
        for scrubber in [f for f in handler.filters if isinstance(f, ScrubbingFilter)]:
            handler.removeFilter(scrubber)


def _secrets() -> list[str]:
    values = [STRIPE_KEY, DSN, "publickey1234"]
    values += [secret for keys in PRODUCER_KEYS.values() for secret in keys.values()]
    return values


def test_no_configured_secret_appears_anywhere_after_a_full_run(
    broker: PlainAmqp,
    ledger: Ledger,
    sentry: CapturingTransport,
    caplog: pytest.LogCaptureFixture,
    worker_logging: None,
) -> None:
    caplog.set_level(logging.DEBUG)
    # Given a worker configured with a Stripe key, a Sentry DSN and producer secrets
    ok, refused, forged, tampered, invalid = (new_id(p) for p in ("s1", "s2", "s3", "s4", "s5"))
    # When a producer sends a success, a refusal, a forgery, a tampered and an invalid command
    broker.publish_command(**command_body(ok, US, 1500))
    broker.publish_command(**command_body(refused, US, 100, "eur"))
    body = json.dumps(command_body(forged, US, 100)).encode()
    broker.publish(body, headers=sign(body, Key("itest", "k2", "not-the-secret")))
    body = json.dumps(command_body(tampered, US, 100)).encode()
    # (only the amount changes: a random request id may contain "100" too)
    broker.publish(
        body.replace(b'"amount": 100', b'"amount": 900'), headers=sign(body, DEFAULT_KEY)
    )
    broker.publish_command(**command_body(invalid, US, "12"))
    broker.publish(b"not json at all", content_type="application/octet-stream")
    events = [broker.event_for(r) for r in (ok, refused, forged, tampered, invalid)]
    dead = kept_dead_letters(ledger, b"not json at all")
    # And an unexpected error carrying the key is reported, and logged with its traceback
    error = RuntimeError(f"boom with {STRIPE_KEY} and {PRODUCER_KEYS['itest']['k1']}")
    report_unexpected(error, request_id=ok)
    try:
        raise error
    except RuntimeError:
        logging.getLogger("worker.transport.tasks").exception(
            "attempt 1 of %s failed unexpectedly", ok
        )
    sentry_sdk.flush()
    # Then no secret is in any of it
    seen: list[str] = [json.dumps(e) for e in events]
    seen += [repr((m.body, m.headers)) for m in dead]
    seen += [json.dumps(e) for e in sentry.events()]
    seen += [caplog.text]
    seen += [r.getMessage() + repr(r.exc_info) for r in caplog.records]
    seen += [_ledger_text(ledger, r) for r in (ok, refused, forged, tampered, invalid)]
    # The forgery and the tampered command are one alert (same producer, same refusal, in
    # the same minute), plus the unexpected error
    assert len(sentry.events()) >= 2
    assert "Traceback (most recent call last)" in caplog.text
    assert "RuntimeError: boom with [secret] and [secret]" in caplog.text
    for secret in _secrets():
        leaks = [text[:200] for text in seen if secret in text]
        assert leaks == [], f"a configured secret leaked into: {leaks}"


def _ledger_text(ledger: Ledger, request_id: str) -> str:
    record = ledger.requests.get(request_id)
    events: list[Any] = [p.event.body for p in ledger.outbox.for_request(request_id)]
    return repr(record) + repr(events) + repr(ledger.history("request", request_id))
