"""Sentry gets unexpected errors with the request id, never the Stripe key or account ids."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Iterator
from typing import Any, Literal

import pytest
import sentry_sdk
from sentry_sdk.envelope import Envelope
from sentry_sdk.transport import Transport

from worker.bootstrap import stripe_client
from worker.ops.observability import (
    AlertThrottle,
    configure_logging,
    init_sentry,
    report_unauthorized,
    report_unexpected,
    scrub,
)
from worker.sandbox import RunningSandbox, running_sandbox
from worker.settings import load_settings

from .test_json_logs import root_output

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


# --- unauthorised floods: one Sentry alert per producer and kind of refusal per minute ---


class SteppedClock:
    """monotonic() for the throttle, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def refusal_alerts(transport: CapturingTransport) -> list[dict[str, Any]]:
    sentry_sdk.flush()
    return [e for e in transport.events() if e.get("tags", {}).get("refusal") == "unauthorized"]


def test_a_flood_of_refusals_is_one_alert_a_minute_with_the_rest_counted_in_the_log(
    transport: CapturingTransport, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a throttle on an injected clock
    clock = SteppedClock()
    throttle = AlertThrottle(clock=clock)
    # When 500 forged commands of one producer are refused within the minute
    for n in range(500):
        report_unauthorized(
            f"req-{n}", "the signature does not match", "billing", "k1", throttle=throttle
        )
    # Then Sentry has one alert
    assert len(refusal_alerts(transport)) == 1
    # And when the minute is over, the next refusal is alerted, and the log counts the rest
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="worker.ops.observability"):
        report_unauthorized(
            "req-500", "the signature does not match", "billing", "k1", throttle=throttle
        )
    alerts = refusal_alerts(transport)
    assert len(alerts) == 2
    assert alerts[1]["tags"]["request_id"] == "req-500"
    assert alerts[1]["extra"]["held_back_before"] == 499
    [line] = [r.getMessage() for r in caplog.records if "without a Sentry alert" in r.getMessage()]
    assert "499 more from producer billing (the signature does not match)" in line


def test_each_producer_and_kind_of_refusal_has_its_own_alert(
    transport: CapturingTransport,
) -> None:
    clock = SteppedClock()
    throttle = AlertThrottle(clock=clock)
    # Given refusals of two producers, and two kinds for one of them, several times each;
    # timestamps refused with different numbers are one kind
    for n in range(3):
        report_unauthorized("r", "the signature does not match", "billing", "k", throttle=throttle)
        report_unauthorized("r", "the signature does not match", "refunds", "k", throttle=throttle)
        report_unauthorized(
            "r",
            f"the signature's timestamp is {400 + n} s from its receipt",
            "billing",
            "k",
            throttle=throttle,
        )
    # Then there is one alert for each (producer, kind)
    assert len(refusal_alerts(transport)) == 3


def test_varying_producer_names_cannot_raise_more_alerts_than_the_throttle_tracks(
    transport: CapturingTransport,
) -> None:
    # Given a throttle tracking at most 4 keys
    throttle = AlertThrottle(max_keys=4, clock=SteppedClock())
    # When 100 commands claim 100 different unknown producers
    for n in range(100):
        report_unauthorized("r", f"unknown producer 'p{n}'", f"p{n}", None, throttle=throttle)
    # Then Sentry gets the first four, and one alert for all the others
    assert len(refusal_alerts(transport)) == 5


def test_the_throttle_admits_one_alert_per_window_under_concurrent_refusals() -> None:
    # Given a throttle whose clock stands still, and 8 threads refusing 250 commands each
    clock = SteppedClock()
    throttle = AlertThrottle(clock=clock)
    key = ("billing", "the signature does not match")
    admitted: list[int] = []
    lock = threading.Lock()

    def refuse() -> None:
        for _ in range(250):
            held_back = throttle.admit(key)
            if held_back is not None:
                with lock:
                    admitted.append(held_back)

    threads = [threading.Thread(target=refuse) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then exactly one was admitted, and every other one is counted for the next window
    assert admitted == [0]
    clock.now += 60
    assert throttle.admit(key) == 8 * 250 - 1


def test_a_window_is_a_minute_long() -> None:
    # Given an alert just sent
    clock = SteppedClock()
    throttle = AlertThrottle(clock=clock)
    key = ("billing", "x")
    assert throttle.admit(key) == 0
    # When the same refusal comes just before, then at, the minute's end
    clock.now += 59.9
    before = throttle.admit(key)
    clock.now += 0.1
    at_the_end = throttle.admit(key)
    # Then the first is held back and the second sent, counting the first
    assert before is None
    assert at_the_end == 1


def test_a_window_forgotten_to_make_room_still_has_what_it_held_back_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a full throttle (two keys) whose first key held three alerts back
    clock = SteppedClock()
    throttle = AlertThrottle(max_keys=2, clock=clock)
    for _ in range(4):
        throttle.admit(("billing", "forged"))
    throttle.admit(("refunds", "forged"))
    # When, a minute later, a refusal of a third key arrives
    clock.now += 60
    with caplog.at_level(logging.WARNING, logger="worker.ops.observability"):
        admitted = throttle.admit(("corrections", "forged"))
    # Then it has a key of its own, and the forgotten window's count is in the log
    assert admitted == 0
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("unauthorized commands: 3 more from producer billing (forged)")


# --- the Stripe SDK's own log lines ----------------------------------------------------------


@pytest.fixture(scope="module")
def sandbox() -> Iterator[RunningSandbox]:
    with running_sandbox() as server:
        yield server


def stripe_lines_of_one_read(
    sandbox: RunningSandbox, level: Literal["DEBUG", "INFO", "WARNING", "ERROR"]
) -> list[str]:
    """The `stripe` logger's lines written while the real SDK reads the platform's account,
    with logging configured at `level`."""
    settings = load_settings(
        stripe_api_key=sandbox.api_key, stripe_api_base=sandbox.url, log_level=level
    )
    with root_output("%(name)s %(message)s") as output:
        configure_logging(settings)
        stripe_client(settings).v1.accounts.retrieve_current()
        logging.getLogger("worker.test").info("after the read")
        written = output.getvalue().splitlines()
    assert "worker.test after the read" in written or level in {"WARNING", "ERROR"}
    return [line for line in written if line.startswith("stripe ")]


def test_the_stripe_sdk_writes_no_line_per_request_at_info(sandbox: RunningSandbox) -> None:
    # Given logging at INFO / When the SDK makes a request / Then it writes no line of its own
    assert stripe_lines_of_one_read(sandbox, "INFO") == []


def test_the_stripe_sdk_lines_come_back_at_debug(sandbox: RunningSandbox) -> None:
    # Given logging at DEBUG / When the SDK makes a request / Then its request lines are written
    written = stripe_lines_of_one_read(sandbox, "DEBUG")
    assert any("Request to Stripe api" in line for line in written), written
    assert any("Stripe API response" in line for line in written), written


def test_at_error_the_stripe_sdk_is_no_louder_than_the_rest() -> None:
    # Given logging at ERROR / Then the stripe logger's warnings are not let through either
    with root_output():
        configure_logging(load_settings(log_level="ERROR"))
        assert not logging.getLogger("stripe").isEnabledFor(logging.WARNING)
        assert logging.getLogger("stripe").isEnabledFor(logging.ERROR)
