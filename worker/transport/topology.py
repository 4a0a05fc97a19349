"""The broker as the worker sees it: every name, the topology the worker and its producers rely
on, the one shape of an event message, the errors that mean "the broker is in trouble", and
whether it is embedded. Public names come from schemas.topology (the producers' contract).
Everything is durable; queues are quorum queues (replicated, with a delivery limit so a
message that keeps killing workers is dead-lettered instead of looping forever).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final, NamedTuple

from amqp.exceptions import AMQPError
from kombu import Exchange, Queue
from kombu.exceptions import KombuError

from schemas.topology import (
    COMMAND_EXCHANGE,
    COMMAND_QUEUE,
    COMMAND_ROUTING_KEY,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENT_CONTENT_TYPE,
    EVENT_EXCHANGE,
)

if TYPE_CHECKING:
    from worker.domain.types import OutboxEvent

# What a publish, a connection or a channel raises when the broker is away or refuses.
BROKER_ERRORS: Final = (KombuError, AMQPError, OSError)
PERSISTENT: Final = 2  # AMQP delivery mode: written to disk by the broker
# kombu's in-process broker (the demo): no RabbitMQ to install.
EMBEDDED_BROKER_URL: Final = "memory://"

TASK_EXCHANGE: Final = "debits.tasks"
TASK_QUEUE: Final = "debits.tasks"
TASK_ROUTING_KEY: Final = "debit.process"
UNROUTED_EVENTS_EXCHANGE: Final = "debits.events.unrouted"
UNROUTED_EVENTS_QUEUE: Final = "debits.events.unrouted"
# A delivery that has failed this often (worker killed while holding it) is dead-lettered.
DELIVERY_LIMIT: Final = 20


def quorum_arguments(*, dead_letter: bool = True) -> dict[str, Any]:
    arguments: dict[str, Any] = {"x-queue-type": "quorum"}
    if dead_letter:
        arguments |= {
            "x-dead-letter-exchange": DEAD_LETTER_EXCHANGE,
            "x-delivery-limit": DELIVERY_LIMIT,
        }
    return arguments


command_exchange = Exchange(COMMAND_EXCHANGE, type="topic", durable=True)
dead_letter_exchange = Exchange(DEAD_LETTER_EXCHANGE, type="topic", durable=True)
unrouted_events_exchange = Exchange(UNROUTED_EVENTS_EXCHANGE, type="fanout", durable=True)
# Events nobody has subscribed to yet are kept in UNROUTED_EVENTS_QUEUE, not dropped.
event_exchange = Exchange(
    EVENT_EXCHANGE,
    type="topic",
    durable=True,
    arguments={"alternate-exchange": UNROUTED_EVENTS_EXCHANGE},
)
task_exchange = Exchange(TASK_EXCHANGE, type="topic", durable=True)

command_queue = Queue(
    COMMAND_QUEUE,
    command_exchange,
    routing_key=COMMAND_ROUTING_KEY,
    durable=True,
    queue_arguments=quorum_arguments(),
)
dead_letter_queue = Queue(
    DEAD_LETTER_QUEUE,
    dead_letter_exchange,
    routing_key="#",
    durable=True,
    queue_arguments=quorum_arguments(dead_letter=False),
)
unrouted_events_queue = Queue(
    UNROUTED_EVENTS_QUEUE,
    unrouted_events_exchange,
    durable=True,
    queue_arguments=quorum_arguments(dead_letter=False),
)
task_queue = Queue(
    TASK_QUEUE,
    task_exchange,
    routing_key=TASK_ROUTING_KEY,
    durable=True,
    queue_arguments=quorum_arguments(),
)


class EventMessage(NamedTuple):
    """An event as it goes on the wire. `properties` and `headers` carry AMQP's own names,
    so py-amqp takes them as they are (`amqp.Message(body, application_headers=headers,
    **properties)`) and so does kombu (`publish(body, headers=headers, **properties)`)."""

    body: str
    exchange: str
    routing_key: str
    headers: dict[str, str]
    properties: dict[str, Any]


def event_message(event: OutboxEvent) -> EventMessage:
    """The one message for an event, whoever sends it: the event pump, the outbox relay,
    the embedded broker's publisher. Its id is the event's, so consumers can deduplicate."""
    return EventMessage(
        event.body,
        EVENT_EXCHANGE,
        event.routing_key,
        {"ce-id": event.event_id, "ce-type": event.event_type},
        {
            "content_type": EVENT_CONTENT_TYPE,
            "content_encoding": "utf-8",
            "message_id": event.event_id,
            "delivery_mode": PERSISTENT,
            "priority": 0,
        },
    )


def is_embedded(broker_url: str) -> bool:
    """Whether the broker runs inside this process (kombu's memory transport: the demo).
    It has no event loop and no publisher confirms, so events are published and commands
    settled on the worker thread that handled them."""
    return broker_url.startswith(EMBEDDED_BROKER_URL)


def declare_all(channel: Any) -> None:
    """Idempotent: safe on every start of every process."""
    for exchange in (dead_letter_exchange, unrouted_events_exchange, command_exchange):
        exchange(channel).declare()
    event_exchange(channel).declare()
    for queue in (dead_letter_queue, unrouted_events_queue, command_queue, task_queue):
        queue(channel).declare()
