"""Load: commands published at a steady rate, events consumed by a plain AMQP client, and
the publish-to-event latency of every request."""

from __future__ import annotations

import contextlib
import json
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import amqp

from bench.services import ACCOUNTS
from schemas.signing import Signer


def connect(vhost: str, *, confirm_publish: bool = True) -> amqp.Connection:
    # confirm_publish: py-amqp waits for the broker's confirm on every publish only with it.
    connection = amqp.Connection(
        "127.0.0.1:5672",
        userid="guest",
        password="guest",
        virtual_host=vhost,
        confirm_publish=confirm_publish,
    )
    connection.connect()
    return connection


def command(request_id: str, index: int) -> bytes:
    return json.dumps(
        {
            "request_id": request_id,
            "account": ACCOUNTS[index % len(ACCOUNTS)],
            "amount": 1,
            "currency": "usd",
            "reason": "platform_charge",
        }
    ).encode()


@dataclass
class Timeline:
    """When each request was published and when its event arrived (epoch seconds)."""

    published: dict[str, float] = field(default_factory=dict)
    answered: dict[str, float] = field(default_factory=dict)
    # request → failure code, for every request answered with DebitFailed: a benchmark that
    # counts refusals as throughput measures nothing, so the report shows and fails on them.
    failed: dict[str, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def samples(self) -> list[tuple[float, float]]:
        """(seconds since the first publish, latency in seconds) of each answered request."""
        if not self.published:
            return []
        start = min(self.published.values())
        return sorted(
            (self.published[r] - start, at - self.published[r])
            for r, at in self.answered.items()
            if r in self.published
        )


class EventListener:
    """Consumes a queue in its own thread; `subject` names the request."""

    def __init__(self, vhost: str, timeline: Timeline, bind: Callable[[Any], str]) -> None:
        self._connection = connect(vhost)
        channel = self._connection.channel()
        self._queue = bind(channel)
        channel.basic_consume(self._queue, callback=self._on_message, no_ack=True)
        self._timeline = timeline
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _on_message(self, message: amqp.Message) -> None:
        now = time.time()
        event = json.loads(message.body)
        subject = event["subject"]
        with self._timeline.lock:
            if subject in self._timeline.answered:
                return
            self._timeline.answered[subject] = now
            if str(event.get("type", "")).endswith(".failed"):
                self._timeline.failed[subject] = str(event.get("data", {}).get("code"))

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._connection.drain_events(timeout=0.2)
            except TimeoutError:
                continue

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            self._connection.close()


def bind_events(channel: Any) -> str:
    queue = f"bench-events-{uuid.uuid4().hex[:8]}"
    channel.queue_declare(queue, exclusive=True, auto_delete=True)
    channel.queue_bind(queue, "debits.events", routing_key="debit.*")
    return queue


def steady(
    rate: float,
    duration: float,
    publish: Callable[[str, int], None],
    timeline: Timeline,
    prefix: str,
) -> None:
    """Publish `rate` per second for `duration` seconds on a fixed schedule (no bursts to
    catch up, no coordinated omission: each is sent at its scheduled time or as soon after)."""
    start = time.monotonic()
    total = int(rate * duration)
    for index in range(total):
        due = start + index / rate
        pause = due - time.monotonic()
        if pause > 0:
            time.sleep(pause)
        request_id = f"{prefix}-{index:07d}"
        with timeline.lock:
            timeline.published[request_id] = time.time()
        publish(request_id, index)


# The benchmark is a producer like any other: its commands are signed and the worker it
# starts knows this (test-only) key.
BENCH_SIGNER = Signer("benchmark", "k1", "benchmark-test-secret")


class ConfirmedPublisher:
    """Publishes commands open-loop: confirms are collected as they come instead of waited
    for one by one (a quorum-queue confirm takes longer than the gap between two commands
    at the offered rate). `close` waits for every outstanding confirm and fails on a nack."""

    def __init__(self, vhost: str) -> None:
        self.connection = connect(vhost, confirm_publish=False)
        self._channel = self.connection.channel()
        self._channel.confirm_select()
        events: Any = getattr(self._channel, "events")  # noqa: B009 (untyped in py-amqp)
        events["basic_ack"].add(self._on_ack)
        events["basic_nack"].add(self._on_nack)
        self._published = self._confirmed = self._refused = 0

    def __call__(self, request_id: str, index: int) -> None:
        body = command(request_id, index)
        message = amqp.Message(
            body,
            content_type="application/json",
            delivery_mode=2,
            application_headers=BENCH_SIGNER.headers_for(body),
        )
        self._channel.basic_publish(
            message, exchange="debits.commands", routing_key="debit.requested", mandatory=True
        )
        self._published += 1
        self._collect(timeout=0)

    def close(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self._confirmed + self._refused < self._published:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self._published - self._confirmed} commands unconfirmed")
            self._collect(timeout=0.2)
        self.connection.close()
        if self._refused:
            raise RuntimeError(f"the broker refused {self._refused} commands")

    def abandon(self) -> None:
        """Close without waiting (after a failure; a no-op after `close`)."""
        with contextlib.suppress(OSError, amqp.exceptions.AMQPError):
            self.connection.close()

    def _collect(self, timeout: float) -> None:
        with contextlib.suppress(TimeoutError):
            while True:
                self.connection.drain_events(timeout=timeout)

    def _on_ack(self, tag: int, multiple: bool) -> None:
        self._confirmed = tag if multiple else self._confirmed + 1

    def _on_nack(self, tag: int, multiple: bool) -> None:
        self._refused += tag - self._confirmed - self._refused if multiple else 1


def wait_for(timeline: Timeline, count: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while len(timeline.answered) < count and time.monotonic() < deadline:
        time.sleep(0.1)


def percentile(values: list[float], share: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]
