"""Secrets come from the environment or from files, restricted keys work, and neither log
lines nor Sentry alerts carry a configured secret."""

from __future__ import annotations

import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import pytest
import sentry_sdk

from worker.bootstrap import authenticator, stripe_client
from worker.ops.observability import (
    ScrubbingFilter,
    configure_logging,
    init_sentry,
    log_context,
    report_unauthorized,
)
from worker.settings import load_settings

from .test_json_logs import root_output as root_output_of
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


def fail(error: Exception) -> NoReturn:
    raise error


@pytest.fixture
def root_output() -> Iterator[io.StringIO]:
    """What a handler on the root logger writes, as configure_logging leaves it; what
    configure_logging changed is put back afterwards."""
    with root_output_of("%(levelname)s %(name)s: %(message)s") as output:
        yield output


def test_a_logged_exception_carrying_a_secret_is_written_without_it(
    root_output: io.StringIO,
) -> None:
    # Given logging configured by the worker, with a key and a producer secret
    configure_logging(
        load_settings(stripe_api_key=RK, producer_keys={"billing": {"k": PRODUCER_SECRET}})
    )
    log = logging.getLogger("worker.test_secrets")
    # When an exception whose message carries both is logged with its traceback
    try:
        fail(RuntimeError(f"Stripe refused {RK} signed with {PRODUCER_SECRET}"))
    except RuntimeError:
        log.exception("attempt failed unexpectedly")
    # Then the traceback is written, without either secret
    text = root_output.getvalue()
    assert "attempt failed unexpectedly" in text
    assert "Traceback (most recent call last)" in text
    assert "RuntimeError: Stripe refused [secret] signed with [secret]" in text
    assert RK not in text
    assert PRODUCER_SECRET not in text


def test_configuring_logging_twice_leaves_one_scrubber_per_handler(
    root_output: io.StringIO,
) -> None:
    settings = load_settings(stripe_api_key=RK)
    configure_logging(settings)
    configure_logging(settings)
    for handler in logging.getLogger().handlers:
        assert sum(isinstance(f, ScrubbingFilter) for f in handler.filters) == 1


def test_json_lines_never_print_a_configured_secret(root_output: io.StringIO) -> None:
    # Given JSON logs of a worker with a key and a producer secret
    configure_logging(
        load_settings(
            stripe_api_key=RK,
            producer_keys={"billing": {"k": PRODUCER_SECRET}},
            log_format="json",
        )
    )
    log = logging.getLogger("worker.test_secrets")
    # When secrets reach a message, an exception, a context's field and a call's field
    with log_context(request_id=f"req-{PRODUCER_SECRET}", producer=f"billing {RK}"):
        log.warning("leak %s", RK)
        try:
            fail(RuntimeError(f"Stripe refused {RK} signed with {PRODUCER_SECRET}"))
        except RuntimeError:
            log.exception("attempt failed unexpectedly")
        log.info("refused", extra={"outcome": "failed", "code": f"bad {PRODUCER_SECRET}"})
    # Then every line is JSON, and none carries either secret
    text = root_output.getvalue()
    assert RK not in text
    assert PRODUCER_SECRET not in text
    message, exception, field = (json.loads(line) for line in text.splitlines())
    assert message["message"] == "leak [secret]"
    assert exception["exc"].endswith("RuntimeError: Stripe refused [secret] signed with [secret]")
    assert (message["request_id"], message["producer"]) == ("req-[secret]", "billing [secret]")
    assert exception["request_id"] == "req-[secret]"
    assert field["code"] == "bad [secret]"
    assert field["request_id"] == "req-[secret]"


def test_every_handler_gets_the_scrubbed_traceback_not_the_exception() -> None:
    # Given a record of an exception carrying the secret, with a stack carrying it too
    scrubber = ScrubbingFilter((PRODUCER_SECRET,))
    try:
        fail(ValueError(f"bad signature {PRODUCER_SECRET}"))
    except ValueError:
        exc_info = sys.exc_info()
    record = logging.LogRecord("worker.test", logging.ERROR, __file__, 1, "refused", None, exc_info)
    record.stack_info = f"Stack (most recent call last):\n  verify({PRODUCER_SECRET!r})"
    # When the scrubbing filter passes it
    assert scrubber.filter(record)
    # Then any formatter writes the traceback and the stack without the secret, and no
    # handler after it can format the raw exception again
    text = logging.Formatter("%(message)s").format(record)
    assert "ValueError: bad signature [secret]" in text
    assert "verify('[secret]')" in text
    assert PRODUCER_SECRET not in text
    assert record.exc_info is None
    assert PRODUCER_SECRET not in repr(record.__dict__)


def test_the_redis_urls_password_is_a_secret_written_nowhere() -> None:
    # Given a Redis URL with a password (percent-encoded, as URLs carry it)
    url = "redis://:s3cr%40t-redis@cache:6379/0"
    settings = load_settings(stripe_api_key=RK, rate_budget_redis_url=url)
    scrubber = ScrubbingFilter(settings.secrets())
    # When a line carries the URL, or the decoded password a client would send
    record = logging.LogRecord(
        "worker.test",
        logging.WARNING,
        __file__,
        1,
        "rate budget at %s; AUTH %s refused",
        (url, "s3cr@t-redis"),
        None,
    )
    assert scrubber.filter(record)
    # Then neither form of the password is written
    text = logging.Formatter("%(message)s").format(record)
    assert "s3cr" not in text
    assert text == "rate budget at [secret]; AUTH [secret] refused"
    assert {url, "s3cr%40t-redis", "s3cr@t-redis"} <= set(settings.secrets())


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
