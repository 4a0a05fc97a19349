"""Sentry gets unexpected errors with the request id, never the Stripe key or account ids."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from worker.observability import init_sentry, report_unexpected, scrub
from worker.settings import load_settings

KEY = "sk_test_51SuperSecretKeyValue"


class CapturingTransport(Transport):
    def __init__(self, options: Any = None) -> None:
        super().__init__(options)
        self.envelopes: list[Envelope] = []

    def capture_envelope(self, envelope: Envelope) -> None:
        self.envelopes.append(envelope)

    def events(self) -> list[dict[str, Any]]:
        return [
            json.loads(item.payload.get_bytes())
            for envelope in self.envelopes
            for item in envelope.items
            if item.type == "event"
        ]


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    capturing = CapturingTransport()
    settings = load_settings(stripe_api_key=KEY, sentry_dsn="https://public@sentry.invalid/1")
    assert init_sentry(settings, transport=capturing)
    yield capturing
    sentry_sdk.get_client().close()
    sentry_sdk.init()  # back to a disabled client for the other tests


def test_an_unexpected_error_reaches_sentry_tagged_with_the_request_id_and_scrubbed(
    transport: CapturingTransport,
) -> None:
    # Given an error whose message carries the Stripe key and an account id
    error = RuntimeError(f"boom with {KEY} on acct_1ExpressUS00000001")
    # When it is reported
    report_unexpected(error, request_id="req-42")
    sentry_sdk.flush()
    # Then Sentry gets it with the request id, and neither the key nor the account
    events = transport.events()
    assert len(events) == 1
    assert events[0]["tags"]["request_id"] == "req-42"
    sent = json.dumps(events[0])
    assert KEY not in sent
    assert "acct_1ExpressUS00000001" not in sent


def test_without_a_dsn_sentry_stays_off() -> None:
    # Given no DSN (an empty one counts as none)
    settings = load_settings(stripe_api_key=KEY, sentry_dsn="")
    # When Sentry is initialised / Then it is not
    assert init_sentry(settings) is False


def test_scrub_removes_configured_secrets_keys_and_account_ids() -> None:
    text = scrub(f"{KEY} rk_live_abc acct_1Xyz and secret-dsn", ("secret-dsn",))
    assert text == "[stripe-key] [stripe-key] acct_[redacted] and [secret]"
