"""Commands are plain JSON, never compressed: a message published with kombu's `compression`
header is refused before anything inflates it (a few hundred KB on the wire became 300 MB).

kombu inflates such a body while it turns the raw AMQP message into a `kombu.Message`
(`Message.__init__`, from `Consumer._receive_callback`), before any `on_message` sees it.
`PlainConsumer` renames the header on the raw message first, so the intake can dead-letter the
message as it arrived; fetched from the dead-letter queue later, it is not inflated either.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Final

import amqp
from kombu import Consumer, compression

# kombu's name (kombu.compression): Message.__init__ decompresses the body when it is set.
COMPRESSION_HEADER: Final = "compression"
ORIGINAL_COMPRESSION_HEADER: Final = "x-debit-worker-original-compression"


def defused(headers: Mapping[str, Any]) -> dict[str, Any]:
    """The headers with `compression` renamed, every other header kept as it was."""
    found = dict(headers)
    if COMPRESSION_HEADER in found:
        found[ORIGINAL_COMPRESSION_HEADER] = found.pop(COMPRESSION_HEADER)
    return found


def refusal(headers: Mapping[str, Any] | None) -> str | None:
    """Why the intake refuses a message with these headers, or None if it may be read."""
    headers = headers or {}
    for name in (ORIGINAL_COMPRESSION_HEADER, COMPRESSION_HEADER):
        if name in headers:
            shown = str(headers[name])[:80]
            return f"compressed commands are refused (compression: {shown}); publish plain JSON"
    return None


class CompressionRefused(ValueError):
    """A compressed message reached one of Celery's own consumers in a worker process."""


def _refuse(body: bytes) -> bytes:
    raise CompressionRefused(
        f"compressed messages are refused ({len(body)} bytes left compressed); "
        "debit-worker neither compresses nor inflates"
    )


def refuse_decompression() -> None:
    """Make every kombu compression in this process refuse, for a worker process only.

    Celery's own consumers (the task queue, remote control) would inflate a compressed message
    before any of our code sees it: 300 KB on `debits.tasks` or `celery.pidbox` took a worker
    to 2 GB. Refused, kombu records a decode error, which Celery logs (CRITICAL, "Can't decode
    message body") and drops. Process-wide, so `debit-worker run` calls it, not the app.
    """
    for content_type in compression.encoders():
        compression.register(_refuse, _refuse, content_type)


class PlainConsumer(Consumer):
    """A kombu Consumer whose messages are never inflated.

    `_receive_callback` is where kombu holds the raw py-amqp message before converting it:
    overriding it changes this consumer's deliveries only, whereas patching the channel's
    `message_to_python` would touch every consumer, on an object rebuilt at each reconnect.
    It is a private kombu method: tests/unit/test_plain_consumer.py fails if kombu changes it.
    kombu's in-memory transport (the demo) converts messages before any consumer sees them;
    the intake still refuses them by the header, and that transport has no outside producer.
    """

    def _receive_callback(self, message: Any) -> None:
        if isinstance(message, amqp.Message):
            headers = message.properties.get("application_headers")
            if isinstance(headers, dict) and COMPRESSION_HEADER in headers:
                message.properties["application_headers"] = defused(headers)
        super()._receive_callback(message)
