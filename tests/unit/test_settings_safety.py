"""Settings that would let a live key move money outside policy stop the worker before it
starts: unsigned mode needs a second, explicitly dangerous setting, and a live key is only
ever sent to Stripe's own address. Unsigned mode, while on, is an ERROR line at every start."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.app import UNSIGNED_MODE_WARNING, build_worker
from worker.settings import Settings, SettingsError, load_settings

LIVE_KEYS = ("sk_live_51LiveSecretKey", "rk_live_51LiveRestrictedKey")


def worker_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "broker_url": "memory://",
        "database_url": f"sqlite:///{tmp_path / 'ledger.sqlite3'}",
        "stripe_api_key": "sk_test_safety",
    }
    return load_settings(**(values | overrides))


def unsigned_mode_lines(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.getMessage() == UNSIGNED_MODE_WARNING]


@pytest.mark.parametrize("key", LIVE_KEYS)
def test_a_live_key_without_signatures_is_refused_naming_the_second_setting(
    tmp_path: Path, key: str
) -> None:
    # Given a live key and signatures not required, without the explicit second setting
    settings = worker_settings(tmp_path, stripe_api_key=key, require_signatures=False)
    # When the worker is built / Then it refuses, in one sentence naming both settings
    with pytest.raises(SettingsError) as refused:
        build_worker(settings)
    message = str(refused.value)
    assert "DEBIT_WORKER_REQUIRE_SIGNATURES=false" in message
    assert "DEBIT_WORKER_ALLOW_UNSIGNED_LIVE_MODE=true" in message
    assert "\n" not in message
    assert key not in message


def test_a_live_key_without_signatures_starts_only_when_explicitly_allowed_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a live key, signatures not required, and the dangerous setting on
    settings = worker_settings(
        tmp_path,
        stripe_api_key=LIVE_KEYS[0],
        require_signatures=False,
        allow_unsigned_live_mode=True,
    )
    # When the worker is built
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        build_worker(settings)
    # Then it starts, with an ERROR line saying anyone on the broker can move money
    [line] = unsigned_mode_lines(caplog)
    assert line.levelno == logging.ERROR
    assert "DEBIT_WORKER_REQUIRE_SIGNATURES=false" in line.getMessage()
    assert "any client of the broker can move money" in line.getMessage()


def test_unsigned_mode_is_an_error_line_at_every_start_in_test_mode_too(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a test key with signatures not required (allowed without the second setting)
    settings = worker_settings(tmp_path, require_signatures=False)
    # When the worker starts twice
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        build_worker(settings)
        build_worker(settings)
    # Then each start logs the ERROR line
    assert len(unsigned_mode_lines(caplog)) == 2


def test_a_worker_requiring_signatures_logs_no_unsigned_mode_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="worker.app"):
        build_worker(worker_settings(tmp_path, stripe_api_key=LIVE_KEYS[1]))
    assert unsigned_mode_lines(caplog) == []


@pytest.mark.parametrize(
    "base",
    [
        "http://api.stripe.com",  # not HTTPS
        "http://sandbox:12111",
        "https://api.stripe.com.evil.example",
        "https://stripe-proxy.internal",
        "https://api.stripe.com:8443",
        "https://api.stripe.com/v1",
        "https://user:pw@api.stripe.com",
    ],
)
@pytest.mark.parametrize("key", LIVE_KEYS)
def test_a_live_key_is_refused_with_any_api_base_but_stripes_own(
    tmp_path: Path, key: str, base: str
) -> None:
    # Given a live key and another API address
    settings = worker_settings(tmp_path, stripe_api_key=key, stripe_api_base=base)
    # When the worker is built / Then it refuses in one sentence naming the setting
    with pytest.raises(SettingsError) as refused:
        build_worker(settings)
    message = str(refused.value)
    assert message.startswith("DEBIT_WORKER_STRIPE_API_BASE is ")
    assert "https://api.stripe.com" in message
    assert "\n" not in message
    assert key not in message
    assert "user:pw" not in message


@pytest.mark.parametrize("base", [None, "https://api.stripe.com", "https://api.stripe.com/"])
def test_a_live_key_with_stripes_own_address_starts(tmp_path: Path, base: str | None) -> None:
    settings = worker_settings(tmp_path, stripe_api_key=LIVE_KEYS[0], stripe_api_base=base)
    assert settings.require_safe_to_run().get_secret_value() == LIVE_KEYS[0]
    build_worker(settings)


def test_a_test_key_may_use_the_sandbox_over_http(tmp_path: Path) -> None:
    settings = worker_settings(tmp_path, stripe_api_base="http://127.0.0.1:12111")
    build_worker(settings)
    assert settings.require_safe_to_run().get_secret_value() == "sk_test_safety"


def test_the_second_setting_is_off_by_default_and_described_as_dangerous() -> None:
    field = Settings.model_fields["allow_unsigned_live_mode"]
    assert field.default is False
    assert field.description is not None
    assert field.description.startswith("DANGEROUS")
