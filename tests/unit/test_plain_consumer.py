"""Compressed commands are never inflated: the intake's consumer hands them on as they
arrived, the intake refuses them by their header, and their dead letters carry the header
under another name, so no kombu client inflates them later either."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import zlib
from collections.abc import Iterator
from typing import Any, cast

import amqp
import pytest
from celery import Celery
from kombu import Connection, Message
from kombu.transport import pyamqp

from worker.transport.plain_consumer import (
    COMPRESSION_HEADER,
    ORIGINAL_COMPRESSION_HEADER,
    PlainConsumer,
    refusal,
)
from worker.transport.publisher import DeadLetters
from worker.transport.topology import dead_letter_queue

GZIP = "application/x-gzip"  # kombu.compression's name for zlib
# Small here: what matters is whether anything inflates it, not how far.
COMMAND = b'{"request_id": "zip-1", "account": "acct_1", "amount": 100}' * 50
COMPRESSED = zlib.compress(COMMAND)


class FakeAmqpChannel:
    """What kombu's py-amqp channel does with a delivery: build a kombu message from it."""

    no_ack_consumers = None

    def message_to_python(self, raw: amqp.Message) -> Message:
        return pyamqp.Message(raw, channel=self)


def body(message: Message) -> bytes:
    """kombu's stubs say str; a py-amqp delivery's body is bytes."""
    return cast(bytes, message.body)


def delivered(headers: dict[str, Any]) -> list[Message]:
    """The messages PlainConsumer hands on for one raw py-amqp delivery."""
    seen: list[Message] = []
    consumer = PlainConsumer(FakeAmqpChannel(), queues=[], on_message=seen.append)  # type: ignore[arg-type]
    raw = amqp.Message(COMPRESSED, application_headers=headers)
    raw.delivery_info = {"delivery_tag": 1}
    consumer._receive_callback(raw)
    return seen


def test_a_compressed_delivery_reaches_the_intake_as_it_was_sent() -> None:
    # Given a raw delivery with kombu's compression header and other headers
    headers = {COMPRESSION_HEADER: GZIP, "x-debit-producer": "billing", "n": 7}
    # When the intake's consumer converts it
    [message] = delivered(headers)
    # Then its body is still the compressed bytes: nothing inflated it
    assert body(message) == COMPRESSED
    # And the header is renamed, every other header kept
    assert message.headers == {
        ORIGINAL_COMPRESSION_HEADER: GZIP,
        "x-debit-producer": "billing",
        "n": 7,
    }


def test_a_plain_delivery_reaches_the_intake_untouched() -> None:
    # Given a raw delivery without a compression header
    [message] = delivered({"x-debit-producer": "billing"})
    # Then its body and headers are as published
    assert body(message) == COMPRESSED
    assert message.headers == {"x-debit-producer": "billing"}


def test_kombu_itself_would_inflate_the_same_delivery() -> None:
    # Given the same delivery converted by kombu alone (what the intake used to receive)
    raw = amqp.Message(COMPRESSED, application_headers={COMPRESSION_HEADER: GZIP})
    raw.delivery_info = {"delivery_tag": 1}
    # Then kombu inflates it: the reason for PlainConsumer
    assert body(FakeAmqpChannel().message_to_python(raw)) == COMMAND


@pytest.mark.parametrize("name", [COMPRESSION_HEADER, ORIGINAL_COMPRESSION_HEADER])
def test_the_intake_refuses_a_compressed_message_naming_the_compression(name: str) -> None:
    # Given headers saying the body is compressed (renamed by PlainConsumer, or not: the
    # in-memory transport converts messages before any consumer sees them)
    reason = refusal({name: GZIP, "x-debit-producer": "billing"})
    # Then the reason names the compression and what to do instead
    assert reason == (
        "compressed commands are refused (compression: application/x-gzip); publish plain JSON"
    )


def test_the_intake_reads_a_message_without_compression() -> None:
    assert refusal({"x-debit-producer": "billing", "content-encoding": "utf-8"}) is None
    assert refusal(None) is None


@pytest.fixture
def memory_app() -> Iterator[Celery]:
    app = Celery("test-dead-letters", broker="memory://", set_as_current=False)
    yield app
    app.close()


def test_a_dead_letter_keeps_the_compression_under_another_name(memory_app: Celery) -> None:
    # Given the dead-letter queue, and a compressed message with the producer's headers
    with Connection("memory://") as connection:
        dead_letter_queue(connection.default_channel).declare()
        dead = connection.SimpleQueue(dead_letter_queue)  # type: ignore[arg-type]
        # When it is dead-lettered with its headers
        DeadLetters(memory_app).send(
            COMPRESSED,
            reason=refusal({COMPRESSION_HEADER: GZIP}) or "",
            stage="intake",
            headers={COMPRESSION_HEADER: GZIP, "x-debit-producer": "billing"},
        )
        # Then read back by kombu, it is still the bytes that arrived: nothing inflated it
        message = dead.get(timeout=5)
        assert body(message) == COMPRESSED
        # And the compression is named under the renamed header; the others are kept
        assert COMPRESSION_HEADER not in message.headers
        assert message.headers[ORIGINAL_COMPRESSION_HEADER] == GZIP
        assert message.headers["x-debit-producer"] == "billing"
        assert "compressed commands are refused" in message.headers["x-debit-worker-reason"]
        message.ack()
        dead.close()


# Process-wide, so it runs in an interpreter of its own, as `debit-worker run` does.
REFUSING_PROCESS = textwrap.dedent(
    """
    import zlib
    from kombu import Message, compression
    from worker.transport.plain_consumer import CompressionRefused, refuse_decompression

    refuse_decompression()
    packed = zlib.compress(b"0" * 100_000)
    for name in ("application/x-gzip", "gzip", "zlib", "bzip2", "lzma"):
        try:
            compression.decompress(packed, name)
        except CompressionRefused:
            print("refused", name)
    message = Message(body=packed, headers={"compression": "gzip"})
    print("left compressed", message.body == packed and len(message.errors) == 1)
    """
)


def test_a_worker_process_inflates_nothing_whatever_consumes_it() -> None:
    # Given an interpreter where refuse_decompression was called (Celery's own consumers,
    # of tasks and remote control, convert messages before any code of ours sees them)
    ran = subprocess.run(
        [sys.executable, "-c", REFUSING_PROCESS],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    # Then kombu refuses every compression it knows, under every name, and a message it
    # converts keeps its compressed bytes, with a decode error for its consumer to handle
    assert ran.returncode == 0, ran.stderr
    assert ran.stdout.splitlines() == [
        "refused application/x-gzip",
        "refused gzip",
        "refused zlib",
        "refused bzip2",
        "refused lzma",
        "left compressed True",
    ]
