"""The one way out: the handler hands each recorded event to its Outbound, which marks the
row sent only once the broker took the event, and leaves the rest to the outbox relay.
Every sender puts the same message on the wire (topology.event_message)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
from celery import Celery
from kombu import Connection, Queue
from sqlalchemy.exc import OperationalError

from worker.adapters.ledger import Ledger
from worker.bootstrap import outbound
from worker.domain.types import OutboxEvent
from worker.handlers import Result
from worker.settings import load_settings
from worker.transport.event_pump import EventPump
from worker.transport.publisher import PublishingOutbound
from worker.transport.relay import GRACE_SECONDS, relay_once
from worker.transport.topology import EMBEDDED_BROKER_URL, event_exchange, is_embedded

from .fakes import FakeClock, FakePublisher, World, a_body, a_world, migrated_ledger


@pytest.fixture
def world(tmp_path: Path) -> World:
    return a_world(tmp_path)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return migrated_ledger(tmp_path, FakeClock())


def recorded(ledger: Ledger, request_id: str = "req-1") -> tuple[int, OutboxEvent]:
    event = OutboxEvent(
        event_id=f"evt-{request_id}",
        request_id=request_id,
        event_type="io.debit-worker.debit.succeeded.v1",
        routing_key="debit.succeeded",
        body='{"id": "evt"}',
    )
    ledger.outbox.add(event)
    [pending] = ledger.outbox.for_request(request_id)
    return pending.row_id, event


# --- the handler's side ---------------------------------------------------------------------


def test_the_handler_hands_its_outcome_over_and_the_row_stays_unsent_until_confirmed(
    world: World,
) -> None:
    # Given a broker that confirms only when told to, as RabbitMQ confirms the pump's batches
    world.outbound.confirm_at_once = False

    # When a debit succeeds
    assert world.handle(a_body()) is Result.SUCCEEDED

    # Then its event was handed over with its own outbox row, which the handler did not
    # mark sent itself
    [pending] = world.ledger.outbox.for_request("req-1")
    assert world.outbound.handed_over == [(pending.row_id, pending.event)]
    assert not pending.sent
    # When the broker confirms it, the row is sent
    world.outbound.confirm()
    assert world.ledger.outbox.count_unsent() == 0


def test_an_event_never_confirmed_is_published_by_the_relay(world: World) -> None:
    # Given an outcome whose event the broker took but never confirmed (a lost channel)
    world.outbound.confirm_at_once = False
    world.handle(a_body())
    world.outbound.unconfirmed.clear()

    # When the relay runs after its grace period
    world.clock.advance(GRACE_SECONDS + 1)
    sent = relay_once(world.ledger, world.publisher)

    # Then it publishes the same event again (consumers deduplicate by its id), and marks it
    [first, again] = world.publisher.published
    assert sent == 1
    assert again.event_id == first.event_id
    assert world.ledger.outbox.count_unsent() == 0


# --- the embedded broker's Outbound ---------------------------------------------------------


def test_the_embedded_outbound_publishes_at_once_and_marks_the_row_sent(ledger: Ledger) -> None:
    # Given a recorded event
    row_id, event = recorded(ledger)
    broker = FakePublisher()

    # When it is sent through the embedded broker's Outbound
    PublishingOutbound(broker, ledger.outbox.mark_sent_many).send(row_id, event)

    # Then it is published and its row is sent
    assert broker.published == [event]
    assert ledger.outbox.count_unsent() == 0


def test_the_embedded_outbound_leaves_what_the_broker_refused_to_the_relay(
    ledger: Ledger,
) -> None:
    # Given a broker that refuses every publish
    row_id, event = recorded(ledger)
    broker = FakePublisher(down=True)

    # When an event is sent, nothing is raised to the handler
    PublishingOutbound(broker, ledger.outbox.mark_sent_many).send(row_id, event)

    # Then the row waits, unsent, for the relay
    assert broker.published == []
    assert ledger.outbox.count_unsent() == 1


def test_the_embedded_outbound_leaves_an_unmarked_row_to_the_relay_without_raising(
    ledger: Ledger,
) -> None:
    # Given a ledger that refuses the mark (the database went away after the publish)
    row_id, event = recorded(ledger)
    broker = FakePublisher()

    def refused(_rows: list[int]) -> None:
        raise OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))

    # When the event is sent
    PublishingOutbound(broker, refused).send(row_id, event)

    # Then it was published, and its row stays unsent: the relay sends it again
    assert broker.published == [event]
    assert ledger.outbox.count_unsent() == 1


# --- which Outbound a worker gets -----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "embedded"),
    [
        (EMBEDDED_BROKER_URL, True),
        ("memory://localhost//", True),
        ("amqp://guest:guest@rabbit:5672//", False),
        ("amqps://worker@rabbit.example.com:5671/debits", False),
    ],
)
def test_only_the_in_process_broker_is_embedded(url: str, embedded: bool) -> None:
    assert is_embedded(url) is embedded


def test_a_worker_on_rabbitmq_sends_its_events_through_the_pump(ledger: Ledger) -> None:
    # Given a worker's settings on RabbitMQ
    settings = load_settings(broker_url="amqp://guest:guest@localhost:5672//")
    app = Celery("outbound-test", broker=settings.broker_url, set_as_current=False)
    # When its outbound is built, and when a test injects a publisher
    built = outbound(settings, app, ledger)
    injected = outbound(settings, app, ledger, FakePublisher())
    # Then the first is the pump (nothing connects before its first event); an injected
    # publisher is used on the worker thread
    assert isinstance(built, EventPump)
    assert isinstance(injected, PublishingOutbound)


@pytest.fixture
def embedded_app() -> Iterator[Celery]:
    app = Celery("outbound-test", broker=EMBEDDED_BROKER_URL, set_as_current=False)
    yield app
    app.close()


def test_the_embedded_broker_delivers_the_one_event_message(
    embedded_app: Celery, ledger: Ledger
) -> None:
    # Given a consumer of the events exchange on the embedded broker, and a recorded event
    settings = load_settings(broker_url=EMBEDDED_BROKER_URL)
    row_id, event = recorded(ledger)
    with Connection(EMBEDDED_BROKER_URL) as connection:
        events = Queue(f"outbound-{uuid.uuid4().hex[:8]}", event_exchange, routing_key="debit.*")
        events(connection.default_channel).declare()
        inbox = connection.SimpleQueue(events)  # type: ignore[arg-type]

        # When the worker's outbound sends it
        outbound(settings, embedded_app, ledger).send(row_id, event)

        # Then the consumer gets the event's message: its body on the events exchange under
        # its routing key, the event's id as message id, CloudEvents headers, persistent;
        # and the row is sent
        message = inbox.get(timeout=5)
        assert cast(bytes, message.body) == event.body.encode()  # kombu's stubs say str
        assert message.delivery_info == {
            "exchange": "debits.events",
            "routing_key": "debit.succeeded",
        }
        assert (message.content_type, message.content_encoding) == (
            "application/cloudevents+json",
            "utf-8",
        )
        assert message.headers == {"ce-id": event.event_id, "ce-type": event.event_type}
        properties: dict[str, Any] = dict(message.properties)  # kombu's stubs say str values
        assert (properties["message_id"], properties["delivery_mode"]) == (event.event_id, 2)
        message.ack()
        inbox.close()
    assert ledger.outbox.count_unsent() == 0
