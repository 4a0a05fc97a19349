"""Publishes recorded events from one background thread per process, confirmed in batches.

An outcome's event is written to the outbox with the outcome, so it cannot be lost (the relay
publishes whatever stays unsent for 10 s), and the worker thread that recorded it hands it
here instead of waiting for RabbitMQ. This thread publishes what has queued up on its own
connection in confirm mode, waits once for the confirms of the whole batch, and marks the
confirmed rows sent with one statement.

Anything that goes wrong here is left to the relay, never retried in a loop: a publish or
connection error, a nack, an unroutable return, a confirm not received within 10 s, or a
refused mark (the relay then sends a confirmed event a second time; consumers deduplicate
by event id). After a broker error the pump leaves new events to the relay for a growing
pause (1 s doubling to 30 s), and it holds at most MAX_QUEUED events: past that the newest
wait in the outbox for the relay, so a broker outage cannot grow a worker's memory.
"""

from __future__ import annotations

import atexit
import functools
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, Final

import amqp
from celery import Celery
from kombu import Connection
from sqlalchemy.exc import SQLAlchemyError

from worker.domain.types import OutboxEvent
from worker.ops import metrics
from worker.transport.topology import BROKER_ERRORS, event_exchange, event_message

log = logging.getLogger(__name__)

CONFIRM_TIMEOUT_SECONDS: Final = 10.0
SOCKET_TIMEOUT_SECONDS: Final = 10.0
MAX_BATCH: Final = 500
MAX_QUEUED: Final = 10_000
FIRST_PAUSE_SECONDS: Final = 1.0
LONGEST_PAUSE_SECONDS: Final = 30.0


class EventPump:
    """The Outbound of a worker on RabbitMQ: `send(row_id, event)` never blocks on the
    broker and never raises."""

    def __init__(
        self,
        connect: Callable[[], Connection],
        mark_sent_many: Callable[[list[int]], None],
        *,
        clock: Callable[[], float] = time.monotonic,
        confirm_timeout: float = CONFIRM_TIMEOUT_SECONDS,
        max_queued: int = MAX_QUEUED,
    ) -> None:
        self._connect = connect
        self._mark_sent_many = mark_sent_many
        self._clock = clock
        self._confirm_timeout = confirm_timeout
        self._max_queued = max_queued
        self._queue: queue.Queue[tuple[int, OutboxEvent] | None] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self._connection: Connection | None = None
        self._channel: Any = None
        self._sent = 0  # publishes on the current channel: its next delivery tag is this + 1
        self._unsettled: set[int] = set()  # delivery tags the broker has not confirmed yet
        self._refused: set[int] = set()  # nacked by the broker
        self._returned: set[str] = set()  # event ids returned as unroutable
        self._resume_at = 0.0
        self._next_pause = FIRST_PAUSE_SECONDS
        self._overflowed = 0

    def send(self, row_id: int, event: OutboxEvent) -> None:
        if self._thread is None:
            self._start()
        if self._queue.qsize() >= self._max_queued:
            self._overflowed += 1
            metrics.events_left_to_relay(1)
            if self._overflowed == 1:
                log.warning(
                    "event pump: %d events waiting; newer ones are left to the outbox relay",
                    self._max_queued,
                )
            return
        self._queue.put((row_id, event))

    def close(self, timeout: float = 10.0) -> None:
        """Publish what is queued, then end the thread and its connection."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._queue.put(None)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("event pump: not finished within %.0f s; the relay sends the rest", timeout)

    # --- the pump's own thread ---

    def _start(self) -> None:
        # Started on first use, so in the process that publishes (after any fork).
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="event-pump", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        closing = False
        while not closing:
            batch, closing = self._collect()
            if not batch:
                continue
            try:
                self._pump(batch)
            except Exception:  # a bug: the pump must go on, and the relay covers this batch
                log.exception("event pump: %d events left to the outbox relay", len(batch))
                metrics.events_left_to_relay(len(batch))
                self._drop(graceful=False)
        self._drop(graceful=True)

    def _collect(self) -> tuple[list[tuple[int, OutboxEvent]], bool]:
        item = self._queue.get()
        batch: list[tuple[int, OutboxEvent]] = []
        while True:
            if item is None:
                return batch, True
            batch.append(item)
            if len(batch) >= MAX_BATCH:
                return batch, False
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                return batch, False

    def _pump(self, batch: list[tuple[int, OutboxEvent]]) -> None:
        if self._clock() < self._resume_at:  # pausing after a broker error: the relay sends these
            metrics.events_left_to_relay(len(batch))
            return
        try:
            confirmed = self._publish(batch)
        except BROKER_ERRORS as exc:
            pause, self._next_pause = (
                self._next_pause,
                min(LONGEST_PAUSE_SECONDS, self._next_pause * 2),
            )
            self._resume_at = self._clock() + pause
            log.warning(
                "event pump: %d events not confirmed (%r); the outbox relay sends them, and "
                "the next %.0f s of events too",
                len(batch),
                exc,
                pause,
            )
            self._drop(graceful=False)
            metrics.events_left_to_relay(len(batch))
            return
        metrics.events_left_to_relay(len(batch) - len(confirmed))  # refused or returned
        self._next_pause = FIRST_PAUSE_SECONDS
        self._overflowed = 0
        if confirmed:
            self._mark(confirmed)

    def _publish(self, batch: list[tuple[int, OutboxEvent]]) -> list[int]:
        """Publish, wait for every confirm; the row ids the broker took."""
        connection, channel = self._open()
        tags: dict[int, tuple[int, str]] = {}
        for row_id, event in batch:
            m = event_message(event)
            message = amqp.Message(m.body, application_headers=m.headers, **m.properties)
            channel.basic_publish(message, m.exchange, m.routing_key, True)
            self._sent += 1
            tags[self._sent] = (row_id, event.event_id)
            self._unsettled.add(self._sent)
        deadline = self._clock() + self._confirm_timeout
        while self._unsettled:
            remaining = deadline - self._clock()
            if remaining <= 0:
                raise TimeoutError(f"no confirm within {self._confirm_timeout:.0f} s")
            connection.drain_events(timeout=remaining)
        taken = [
            row_id
            for tag, (row_id, event_id) in tags.items()
            if tag not in self._refused and event_id not in self._returned
        ]
        if len(taken) < len(batch):
            log.warning(
                "event pump: the broker refused or returned %d events; the relay tries again",
                len(batch) - len(taken),
            )
        self._refused.clear()
        self._returned.clear()
        return taken

    def _mark(self, row_ids: list[int]) -> None:
        try:
            self._mark_sent_many(row_ids)
        except SQLAlchemyError as exc:
            log.warning(
                "event pump: %d published events not marked sent (%s); the relay publishes "
                "them again (same event ids)",
                len(row_ids),
                exc,
            )

    def _open(self) -> tuple[Connection, Any]:
        if self._connection is not None:
            return self._connection, self._channel
        connection = self._connect()
        try:
            channel: Any = connection.default_channel
            channel.confirm_select()
            channel.events["basic_ack"].add(functools.partial(self._settle, refused=False))
            channel.events["basic_nack"].add(functools.partial(self._settle, refused=True))
            channel.events["basic_return"].add(self._on_return)
            event_exchange(channel).declare()
        except BROKER_ERRORS:
            _close(connection, graceful=False)
            raise
        self._connection, self._channel = connection, channel
        self._sent = 0  # confirms are numbered per channel, from 1
        self._unsettled.clear()
        self._refused.clear()
        self._returned.clear()
        return connection, channel

    def _drop(self, *, graceful: bool) -> None:
        if self._connection is not None:
            _close(self._connection, graceful=graceful)
        self._connection = self._channel = None

    def _settle(self, delivery_tag: int, multiple: bool, *, refused: bool) -> None:
        tags = [t for t in self._unsettled if t <= delivery_tag] if multiple else [delivery_tag]
        self._unsettled.difference_update(tags)
        if refused:
            self._refused.update(tags)

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        # An unroutable event (its exchange gone) comes back before its ack: not sent.
        event_id = (getattr(message, "properties", None) or {}).get("message_id")
        log.warning("event %s returned by %s/%s: %s", event_id, exchange, routing_key, exc)
        self._returned.add(str(event_id))


def _close(connection: Connection, *, graceful: bool) -> None:
    try:
        if graceful:
            connection.close()
        else:
            connection.collect()  # the socket only: no handshake with a broker in trouble
    except BROKER_ERRORS as exc:
        log.debug("event pump connection closed with %r", exc)


def connect_for_events(app: Celery) -> Callable[[], Connection]:
    def connect() -> Connection:
        # Celery's connections wait for each confirm (confirm_publish); this one must not.
        # Socket timeouts: a broker that stops reading (a memory or disk alarm) must not
        # hold the pump in a write for ever.
        connection = app.connection_for_write(
            transport_options={
                "confirm_publish": False,
                "write_timeout": SOCKET_TIMEOUT_SECONDS,
                "read_timeout": SOCKET_TIMEOUT_SECONDS,
            }
        )
        connection.ensure_connection(max_retries=1)
        return connection

    return connect
