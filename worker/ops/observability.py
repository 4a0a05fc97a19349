"""Logging and Sentry. Unexpected errors go to Sentry with the request id; business
refusals never do; secrets and account data are scrubbed from what is sent. Log lines are
text or JSON (DEBIT_WORKER_LOG_FORMAT), JSON ones carrying the request's fields."""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Final

import sentry_sdk
from sentry_sdk.integrations.celery import CeleryIntegration

from worker.settings import Settings

log = logging.getLogger(__name__)

_ACCOUNT = re.compile(r"acct_[A-Za-z0-9]+")
_SECRET = re.compile(r"\b(sk|rk|pk)_(test|live)_[A-Za-z0-9]+")
# Formats a traceback exactly as logging's default formatter does, before it is scrubbed.
_TRACEBACKS = logging.Formatter()


# The fields a JSON line carries when known, from the call's `extra=` or the log_context.
LOG_FIELDS: Final = ("request_id", "producer", "attempt", "outcome", "code")
TEXT_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_NO_FIELDS: Final[Mapping[str, str | int]] = MappingProxyType({})
# Per thread (and per asyncio task): Celery's worker threads each handle one request at a time.
_log_fields: ContextVar[Mapping[str, str | int]] = ContextVar("log_fields", default=_NO_FIELDS)


@contextmanager
def log_context(**fields: str | int | None) -> Iterator[None]:
    """Every line logged by this thread inside the block carries `fields` (names from
    LOG_FIELDS; None: not known, left out), added to those of any enclosing block."""
    unknown = sorted(set(fields) - set(LOG_FIELDS))
    if unknown:
        raise TypeError(f"log_context() got unknown fields {unknown}; known: {LOG_FIELDS}")
    known = {name: value for name, value in fields.items() if value is not None}
    token = _log_fields.set(MappingProxyType({**_log_fields.get(), **known}))
    try:
        yield
    finally:
        _log_fields.reset(token)


class ContextFilter(logging.Filter):
    """Puts the enclosing log_context's fields on each record; a field the call gave itself
    (`extra=`) wins."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, value in _log_fields.get().items():
            record.__dict__.setdefault(name, value)
        return True


class ScrubbingFilter(logging.Filter):
    """Rewrites each record without the configured secrets or Stripe keys: its message, its
    exception's traceback (exception messages often quote what failed), its stack and its
    LOG_FIELDS (a producer's name is whatever the sender wrote)."""

    def __init__(self, secrets: tuple[str, ...]) -> None:
        super().__init__()
        self._secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = scrub_secrets(message, self._secrets)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        if record.exc_info and not record.exc_text:
            record.exc_text = _TRACEBACKS.formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = scrub_secrets(record.exc_text, self._secrets)
            # Formatters print exc_text when set; no handler after this one gets the raw
            # exception (whose message may carry the secret) to format it again.
            record.exc_info = None
        if record.stack_info:
            record.stack_info = scrub_secrets(record.stack_info, self._secrets)
        for name in LOG_FIELDS:
            value = record.__dict__.get(name)
            if value is not None and not isinstance(value, int):
                setattr(record, name, scrub_secrets(str(value), self._secrets))
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: `time` (ISO 8601, UTC), `level`, `logger`, `message`, the
    LOG_FIELDS the record carries, `exc` (the traceback) and `stack` when there is one.
    Non-ASCII characters are escaped, so no character of a message can split the line."""

    def format(self, record: logging.LogRecord) -> str:
        created = datetime.fromtimestamp(record.created, UTC)
        line: dict[str, object] = {
            "time": created.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in LOG_FIELDS:
            value = record.__dict__.get(name)
            if value is not None:
                line[name] = value if isinstance(value, int) else str(value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exc"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return json.dumps(line)


def configure_logging(settings: Settings) -> None:
    """Every root handler (one on standard error if there is none) gets the request's fields,
    then the scrubber, then the configured format; the Stripe SDK's lines are DEBUG-only."""
    logging.basicConfig(format=TEXT_FORMAT)
    root = logging.getLogger()
    root.setLevel(settings.log_level)
    context, scrubber = ContextFilter(), ScrubbingFilter(settings.secrets())
    for handler in root.handlers:
        ours = [f for f in handler.filters if isinstance(f, ContextFilter | ScrubbingFilter)]
        for earlier in ours:
            handler.removeFilter(earlier)  # configured again: these secrets replace those
        # In this order: the fields the context adds are scrubbed before they are written.
        handler.addFilter(context)
        handler.addFilter(scrubber)
        if settings.log_format == "json":
            handler.setFormatter(JsonFormatter())
        elif isinstance(handler.formatter, JsonFormatter):
            handler.setFormatter(logging.Formatter(TEXT_FORMAT))
    # Python prints warnings on standard error as bare lines: as JSON, they are log lines.
    logging.captureWarnings(settings.log_format == "json")
    _quiet_stripe_sdk(settings.log_level)


def _quiet_stripe_sdk(level: str) -> None:
    """The SDK logs every request and response (and its own retries) at INFO, two lines per
    call the worker logs anyway: only at DEBUG are they written."""
    threshold = logging.getLevelNamesMapping()[level]
    stripe = logging.getLogger("stripe")
    stripe.setLevel(logging.NOTSET if level == "DEBUG" else max(logging.WARNING, threshold))


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
    unauthorized_alerts.reset()  # a new client starts with no alert held back
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


# Values in a refusal's reason (quoted names, numbers of seconds): refusals that differ only
# in them are the same kind of refusal.
_REASON_DETAILS = re.compile(r"'[^']*'|\d+(?:\.\d+)?")

AlertKey = tuple[str, str]  # (producer, kind of refusal)


@dataclass
class _Window:
    opened: float
    held_back: int = 0


class AlertThrottle:
    """At most one Sentry alert per producer and kind of refusal per window (thread-safe): a
    flood of refused commands raises one alert a minute, not one each. Every refusal is still
    logged; what was held back is counted in a log line when the key's next alert goes out or
    its window is forgotten. A refusal's producer name is whatever the sender wrote, so past
    `max_keys` keys new ones share one overflow key: varying names raises no more alerts."""

    OVERFLOW: Final[AlertKey] = ("(any other)", "(any refusal)")

    def __init__(
        self,
        window_seconds: float = 60.0,
        *,
        max_keys: int = 32,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.window_seconds = window_seconds
        self._max_keys = max_keys
        self._clock = clock
        self._lock = threading.Lock()
        self._windows: dict[AlertKey, _Window] = {}

    def admit(self, key: AlertKey) -> int | None:
        """None: hold this alert back (it is counted). Otherwise send it; the number held
        back under its key since that key's last alert."""
        now = self._clock()
        closed: list[tuple[AlertKey, int]] = []
        with self._lock:
            if key not in self._windows and len(self._windows) >= self._max_keys:
                closed = self._close_windows(now)
                if len(self._windows) >= self._max_keys:
                    key = self.OVERFLOW
            window = self._windows.get(key)
            if window is not None and now - window.opened < self.window_seconds:
                window.held_back += 1
                admitted = None
            else:
                self._windows[key] = _Window(opened=now)
                admitted = window.held_back if window is not None else 0
                if admitted:
                    closed.append((key, admitted))
        for (producer, kind), held_back in closed:
            log.warning(
                "unauthorized commands: %d more from producer %s (%s) were refused without "
                "a Sentry alert of their own (at most one per %.0f s)",
                held_back,
                producer,
                kind,
                self.window_seconds,
            )
        return admitted

    def reset(self) -> None:
        with self._lock:
            self._windows.clear()

    def _close_windows(self, now: float) -> list[tuple[AlertKey, int]]:
        """Forget every window that has ended; what they held back, to be logged."""
        ended = [k for k, w in self._windows.items() if now - w.opened >= self.window_seconds]
        return [
            (key, held_back) for key in ended if (held_back := self._windows.pop(key).held_back)
        ]


unauthorized_alerts = AlertThrottle()


def report_unauthorized(
    request_id: str,
    reason: str,
    producer: str | None,
    key_id: str | None,
    *,
    throttle: AlertThrottle | None = None,
) -> None:
    """A command that failed its signature check: someone may be trying to move money."""
    held_back = (throttle or unauthorized_alerts).admit(
        (producer or "unknown", _REASON_DETAILS.sub("…", reason))
    )
    if held_back is None:
        return
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id)
        scope.set_tag("refusal", "unauthorized")
        scope.set_tag("producer", producer or "unknown")
        scope.set_tag("key_id", key_id or "unknown")
        scope.set_extra("held_back_before", held_back)
        sentry_sdk.capture_message(f"unauthorized command refused: {reason}", level="warning")


def report_unexpected(
    error: BaseException, *, request_id: str | None, escalation: bool = False
) -> None:
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id or "unknown")
        scope.set_tag("escalation", "needs_reconciliation" if escalation else "no")
        sentry_sdk.capture_exception(error)


def report_reconciliation(problem: str, *, request_id: str | None, kind: str) -> None:
    """Alert a person: the books do not close by themselves (`kind`: "ambiguous" for a
    request the reconciler cannot settle, "daily_proof" for an unexplained difference)."""
    with sentry_sdk.new_scope() as scope:
        scope.set_tag("request_id", request_id or "none")
        scope.set_tag("reconciliation", kind)
        sentry_sdk.capture_message(problem, level="error")
