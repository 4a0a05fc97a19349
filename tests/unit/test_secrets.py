"""Secrets come from the environment or from files, restricted keys work, and neither log
lines nor Sentry alerts carry a configured secret."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
import sentry_sdk

from worker.bootstrap import authenticator, stripe_client
from worker.observability import ScrubbingFilter, init_sentry, report_unauthorized
from worker.settings import load_settings

from .test_observability import CapturingTransport

RK = "rk_live_51RestrictedKeyValue"
PRODUCER_SECRET = "billing-signing-secret-value"


@pytest.fixture
def secrets_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for name in ("STRIPE_API_KEY", "PRODUCER_KEYS", "DATABASE_URL", "PRODUCER_SECRET"):
        monkeypatch.delenv(f"DEBIT_WORKER_{name}", raising=False)
    monkeypatch.chdir(tmp_path)  # no .env file
    folder = tmp_path / "secrets"
    folder.mkdir()
    monkeypatch.setenv("DEBIT_WORKER_SECRETS_DIR", str(folder))
    return folder


def test_secrets_are_read_from_files_named_like_the_environment_variable(
    secrets_dir: Path,
) -> None:
    # Given container secrets, named like the variables (any case), with a trailing newline
    (secrets_dir / "debit_worker_stripe_api_key").write_text(RK + "\n")
    (secrets_dir / "DEBIT_WORKER_DATABASE_URL").write_text("postgresql+psycopg://u:dbpw@db/x\n")
    keys = {"billing": {"2026-11": PRODUCER_SECRET}}
    (secrets_dir / "debit_worker_producer_keys").write_text(json.dumps(keys))
    # When the settings load
    settings = load_settings()
    # Then each secret is read, and hidden in the settings' repr
    assert settings.require_stripe_key().get_secret_value() == RK
    assert settings.database_url.endswith("@db/x")
    assert authenticator(settings).keys == keys
    assert RK not in repr(settings)
    assert PRODUCER_SECRET not in repr(settings)
    assert {RK, "dbpw", PRODUCER_SECRET} <= set(settings.secrets())


def test_a_file_named_only_like_the_setting_is_not_read(secrets_dir: Path) -> None:
    (secrets_dir / "stripe_api_key").write_text(RK)
    assert load_settings().stripe_api_key is None


def test_a_restricted_live_key_is_accepted_and_means_live_mode() -> None:
    settings = load_settings(stripe_api_key=RK)
    assert settings.live_mode
    assert settings.effective_stripe_rate == 100
    assert stripe_client(settings) is not None


def test_log_lines_never_print_a_configured_secret() -> None:
    # Given the scrubbing filter configure_logging puts on the log handlers
    settings = load_settings(stripe_api_key=RK, producer_keys={"billing": {"k": PRODUCER_SECRET}})
    scrubber = ScrubbingFilter(settings.secrets())
    # When a line carrying the secrets is logged
    record = logging.LogRecord(
        "worker.test", logging.WARNING, __file__, 1, "leak %s and %s", (RK, PRODUCER_SECRET), None
    )
    assert scrubber.filter(record)
    # Then neither appears in what is written
    text = logging.Formatter("%(message)s").format(record)
    assert RK not in text
    assert PRODUCER_SECRET not in text
    assert text == "leak [secret] and [secret]"


@pytest.fixture
def transport() -> Iterator[CapturingTransport]:
    capturing = CapturingTransport()
    settings = load_settings(
        stripe_api_key=RK,
        sentry_dsn="https://public@sentry.invalid/1",
        producer_keys={"billing": {"k": PRODUCER_SECRET}},
    )
    assert init_sentry(settings, transport=capturing)
    yield capturing
    sentry_sdk.get_client().close()
    sentry_sdk.init()


def test_a_refused_command_raises_a_tagged_sentry_alert_without_secrets(
    transport: CapturingTransport,
) -> None:
    # When an unauthorized command is reported (its reason naming a secret by accident)
    report_unauthorized("req-9", f"bad signature {PRODUCER_SECRET}", "billing", "k")
    sentry_sdk.flush()
    # Then Sentry has a warning tagged with the refusal, producer and key, and no secret
    (event,) = transport.events()
    assert event["level"] == "warning"
    assert event["tags"]["refusal"] == "unauthorized"
    assert (event["tags"]["producer"], event["tags"]["key_id"]) == ("billing", "k")
    assert event["tags"]["request_id"] == "req-9"
    assert PRODUCER_SECRET not in json.dumps(event)
