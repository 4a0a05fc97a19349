"""Logging and Sentry. Unexpected errors go to Sentry with the request id; business
refusals never do; secrets and account data are scrubbed from what is sent."""

from __future__ import annotations

import logging
import re
from typing import Any

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration

from worker.settings import Settings

_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]+")
_SECRET = re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]+")


class ScrubbingFilter(logging.Filter):
    """Rewrites each record's message without the configured secrets or Stripe keys."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub_secrets(message, self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


def configure_logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    scrubber = ScrubbingFilter(settings.secrets())
    for handler in logging.getLogger().handlers:
        handler.addFilter(scrubber)


def scrub_secrets(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Secrets and Stripe keys out; account ids stay (operators need them in logs)."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[secret]")
    return _SECRET.sub("[stripe-key]", text)


def scrub(text: str, secrets: tuple[str, ...] = ()) -> str:
    return _ACCOUNT.sub("acct_[redacted]", scrub_secrets(text, secrets))


def _scrub_tree(value: Any, secrets: tuple[str, ...]) -> Any:
    if isinstance(value, str):
        return scrub(value, secrets)
    if isinstance(value, dict):
        return {k: _scrub_tree(v, secrets) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub_tree(v, secrets) for v in value]
    return value


def init_sentry(settings: Settings, **client_options: Any) -> bool:
    """Start Sentry when a DSN is configured; `client_options` lets tests capture events."""
    if settings.sentry_dsn is None:
        return False
    secrets = settings.secrets()

    def before_send(event: Any, _hint: Any) -> Any:
        return _scrub_tree(event, secrets)

    sentry_sdk.init(
        dsn=settings.sentry_dsn.get_secret_value(),
        environment=settings.sentry_environment,
        integrations=[CeleryIntegration()],
        send_default_pii=False,
        include_local_variables=False,
        before_send=before_send,
        before_send_transaction=before_send,
        **client_options,
    )
    return True


def report_unauthorized(
    request_id: str, reason: str, producer: str | None, key_id: str | None
) -> None:
    """A command that failed its signature check: someone may be trying to move money."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id)
        scope.set_tag("refusal", "unauthorized")
        scope.set_tag("producer", producer or "unknown")
        scope.set_tag("key_id", key_id or "unknown")
        sentry_sdk.capture_message(f"unauthorized command refused: {reason}", level="warning")


def report_unexpected(
    error: BaseException, *, request_id: str | None, escalation: bool = False
) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id or "unknown")
        scope.set_tag("escalation", "needs_reconciliation" if escalation else "no")
        sentry_sdk.capture_exception(error)
