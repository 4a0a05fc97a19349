"""The event pump on the real broker and the real ledger: recorded events are published with
batched confirms and marked sent; whatever fails is left unsent for the outbox relay."""

from __future__ import annotations

import json
import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import amqp
import pytest
from celery import Celery
from kombu import Connection

from tests.integration.conftest import RABBIT, connect, own_database, own_vhost
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.app import declare_topology
from worker.celery_app import create_app
from worker.domain.types import OutboxEvent
from worker.settings import load_settings
from worker.transport.event_pump import EventPump, connect_for_events
from worker.transport.publisher import KombuEventPublisher

pytestmark = pytest.mark.integration


@dataclass
class Place:
    app: Celery
    ledger: Ledger
    consumer: Any  # a py-amqp channel with `queue` bound to every event
    queue: str

    def recorded(self, count: int) -> list[tuple[int, OutboxEvent]]:
        """`count` events written to the outbox, as a debit's outcome writes them."""
        rows = []
        for _ in range(count):
            request_id = f"pump-{uuid.uuid4().hex[:10]}"
            event = OutboxEvent(
                event_id=f"evt-{request_id}",
                request_id=request_id,
                event_type="io.debit-worker.debit.succeeded.v1",
                routing_key="debit.succeeded",
                body=json.dumps({"id": f"evt-{request_id}", "subject": request_id}),
            )
            self.ledger.outbox.add(event)
            [pending] = self.ledger.outbox.for_request(request_id)
            rows.append((pending.row_id, event))
        return rows

    def unsent(self, rows: list[tuple[int, OutboxEvent]]) -> set[str]:
        """Event ids of `rows` still unsent in the outbox (each request holds one event)."""
        return {
            p.event.event_id
            for _, event in rows
            for p in self.ledger.outbox.for_request(event.request_id)
            if not p.sent
        }

    def delivered(
        self, rows: list[tuple[int, OutboxEvent]], timeout: float = 10.0
    ) -> list[amqp.Message]:
        """The messages of `rows`' events that arrive within `timeout` (others are dropped:
        left over from an earlier test)."""
        wanted = {event.event_id for _, event in rows}
        got: list[amqp.Message] = []
        deadline = time.monotonic() + timeout
        while len(got) < len(wanted) and time.monotonic() < deadline:
            message = self.consumer.basic_get(self.queue, no_ack=True)
            if message is None:
                time.sleep(0.02)
            elif message.properties["message_id"] in wanted:
                got.append(message)
        return got


@pytest.fixture(scope="module")
def place() -> Iterator[Place]:
    for vhost in own_vhost():
        for database_url in own_database():
            settings = load_settings(
                broker_url=f"amqp://guest:guest@{RABBIT[0]}:{RABBIT[1]}/{vhost}",
                database_url=database_url,
                stripe_api_key="sk_test_x",
            )
            app = create_app(settings)
            declare_topology(app)
            connection = connect(vhost)
            channel = connection.channel()
            queue = f"pump-events-{uuid.uuid4().hex[:8]}"
            channel.queue_declare(queue, exclusive=True, auto_delete=True)
            channel.queue_bind(queue, "debits.events", routing_key="debit.*")
            yield Place(app, Ledger.on(make_engine(database_url)), channel, queue)
            connection.close()


def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_sent_events_are_published_as_the_publisher_would_and_marked_sent(place: Place) -> None:
    # Given five recorded events and a pump
    rows = place.recorded(5)
    pump = EventPump(connect_for_events(place.app), place.ledger.outbox.mark_sent_many)
    # When worker threads hand them over
    for row_id, event in rows:
        pump.send(row_id, event)
    # Then each reaches the events exchange once, persistent, with its id and CloudEvents
    # headers, and every row is marked sent
    messages = place.delivered(rows)
    assert sorted(m.properties["message_id"] for m in messages) == sorted(
        e.event_id for _, e in rows
    )
    for message in messages:
        assert message.properties["delivery_mode"] == 2
        assert message.properties["content_type"] == "application/cloudevents+json"
        headers = message.properties["application_headers"]
        assert headers["ce-id"] == message.properties["message_id"]
        assert headers["ce-type"] == "io.debit-worker.debit.succeeded.v1"
    assert wait_until(lambda: not place.unsent(rows))
    pump.close()


def without_event_id(message: amqp.Message, event: OutboxEvent) -> dict[str, Any]:
    """Everything RabbitMQ delivered of `message` but its body, with `event`'s id blanked."""
    properties = dict(message.properties)
    assert properties.pop("message_id") == event.event_id
    headers = dict(properties.pop("application_headers"))
    assert headers.pop("ce-id") == event.event_id
    return {
        **properties,
        "headers": headers,
        "exchange": message.delivery_info["exchange"],
        "routing_key": message.delivery_info["routing_key"],
    }


def test_the_pump_and_the_relay_put_the_same_message_on_the_wire(place: Place) -> None:
    # Given two recorded events of the same type
    by_pump, by_relay = place.recorded(2)
    # When the pump sends one, and the outbox relay's publisher the other
    pump = EventPump(connect_for_events(place.app), place.ledger.outbox.mark_sent_many)
    pump.send(*by_pump)
    KombuEventPublisher(place.app).publish(by_relay[1])
    pump.close()
    # Then RabbitMQ delivers two messages that differ only by their event's id
    delivered = {m.properties["message_id"]: m for m in place.delivered([by_pump, by_relay])}
    pumped, relayed = (delivered[event.event_id] for _, event in (by_pump, by_relay))
    assert without_event_id(pumped, by_pump[1]) == without_event_id(relayed, by_relay[1])
    assert [pumped.body, relayed.body] == [by_pump[1].body, by_relay[1].body]


def test_closing_the_pump_publishes_what_is_still_queued(place: Place) -> None:
    # Given a pump whose connection is slow to open, and events queued behind it
    opened = threading.Event()
    real = connect_for_events(place.app)

    def slow_connect() -> Connection:
        opened.wait(0.5)
        return real()

    pump = EventPump(slow_connect, place.ledger.outbox.mark_sent_many)
    rows = place.recorded(20)
    for row_id, event in rows:
        pump.send(row_id, event)
    # When the worker stops
    pump.close(timeout=10)
    # Then all of them were published and marked before it ended
    assert place.unsent(rows) == set()
    assert len(place.delivered(rows)) == 20


def test_events_the_broker_did_not_take_stay_unsent_for_the_relay_and_the_pump_pauses(
    place: Place, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a broker that cannot be reached, then can
    attempts: list[float] = []
    real = connect_for_events(place.app)

    def flaky_connect() -> Connection:
        attempts.append(time.monotonic())
        if len(attempts) == 1:
            raise ConnectionRefusedError(111, "Connection refused")
        return real()

    pump = EventPump(flaky_connect, place.ledger.outbox.mark_sent_many)
    # When an event is handed over while it is away, and another right after
    with caplog.at_level(logging.WARNING, logger="worker.transport.event_pump"):
        [first] = place.recorded(1)
        pump.send(*first)
        assert wait_until(lambda: "not confirmed" in caplog.text)
        [during_pause] = place.recorded(1)
        pump.send(*during_pause)
        # And another once the first pause (1 s) is over
        time.sleep(1.2)
        [after] = place.recorded(1)
        pump.send(*after)
        pump.close(timeout=10)
    # Then the first two stay unsent in the outbox, where the relay finds them, without a
    # second connection attempt during the pause; the third is published and marked sent
    assert place.unsent([first, during_pause]) == {first[1].event_id, during_pause[1].event_id}
    assert place.unsent([after]) == set()
    assert len(attempts) == 2
    assert [
        m.properties["message_id"] for m in place.delivered([first, during_pause, after], 2)
    ] == [after[1].event_id]
    assert "the outbox relay sends them" in caplog.text


def test_a_pump_that_cannot_keep_up_leaves_the_newest_events_to_the_relay(
    place: Place, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a pump stuck opening its connection with a first event in hand, which holds at
    # most 3 more
    stuck, release = threading.Event(), threading.Event()
    real = connect_for_events(place.app)

    def stuck_connect() -> Connection:
        stuck.set()
        release.wait(10)
        return real()

    pump = EventPump(stuck_connect, place.ledger.outbox.mark_sent_many, max_queued=3)
    rows = place.recorded(6)
    pump.send(*rows[0])
    assert stuck.wait(10)
    # When five more events are handed over
    with caplog.at_level(logging.WARNING, logger="worker.transport.event_pump"):
        for row_id, event in rows[1:]:
            pump.send(row_id, event)
        release.set()
        pump.close(timeout=10)
    # Then the pump published the one in hand and the 3 it could hold, warned once, and the
    # newest two wait unsent for the relay
    published = {m.properties["message_id"] for m in place.delivered(rows, timeout=2)}
    assert published == {e.event_id for _, e in rows[:4]}
    assert place.unsent(rows) == {e.event_id for _, e in rows} - published
    assert caplog.text.count("left to the outbox relay") == 1
