"""Declares the RabbitMQ topology the worker and its producers rely on.

Public names come from schemas.topology. Everything is durable; queues are quorum queues
(replicated, with a delivery limit so a message that keeps killing workers is dead-lettered
instead of looping forever).
"""

from __future__ import annotations

from typing import Any, Final

from kombu import Exchange, Queue

from schemas.topology import (
    COMMAND_EXCHANGE,
    COMMAND_QUEUE,
    COMMAND_ROUTING_KEY,
    DEAD_LETTER_EXCHANGE,
    DEAD_LETTER_QUEUE,
    EVENT_EXCHANGE,
)

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


def declare_all(channel: Any) -> None:
    """Idempotent: safe on every start of every process."""
    for exchange in (dead_letter_exchange, unrouted_events_exchange, command_exchange):
        exchange(channel).declare()
    event_exchange(channel).declare()
    for queue in (dead_letter_queue, unrouted_events_queue, command_queue, task_queue):
        queue(channel).declare()
