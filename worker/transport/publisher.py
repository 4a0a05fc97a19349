"""Publishes events and dead letters to RabbitMQ with confirms and `mandatory`, so a publish
returns only once the broker has taken responsibility for the message."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Final

from celery import Celery
from sqlalchemy.exc import SQLAlchemyError

from schemas.topology import COMMAND_ROUTING_KEY
from worker.domain.ports import EventPublisher, PublishFailed
from worker.domain.types import OutboxEvent
from worker.transport.plain_consumer import defused
from worker.transport.topology import (
    BROKER_ERRORS,
    PERSISTENT,
    dead_letter_exchange,
    event_exchange,
    event_message,
)

log = logging.getLogger(__name__)

# The headers of every dead letter the worker publishes (docs/operations.md "Dead letters").
REASON_HEADER: Final = "x-debit-worker-reason"
STAGE_HEADER: Final = "x-debit-worker-stage"
REQUEST_ID_HEADER: Final = "x-debit-worker-request-id"
# Its own id (uuid4 hex), so that the dead-letter keeper stores it once however often it
# comes back, and when it was dead-lettered (epoch seconds).
DEAD_LETTER_ID_HEADER: Final = "x-debit-worker-dead-letter-id"
DEAD_LETTERED_AT_HEADER: Final = "x-debit-worker-dead-lettered-at"

_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def publish_confirmed(app: Celery, body: str | bytes, **options: Any) -> None:
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                mandatory=True,
                retry=True,
                retry_policy=_RETRY_POLICY,
                **{"delivery_mode": PERSISTENT, **options},
            )
    except BROKER_ERRORS as exc:
        raise PublishFailed(f"broker did not confirm: {exc!r}") from exc


class KombuEventPublisher:
    """The outbox relay's publisher: each event confirmed before the call returns."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish(self, event: OutboxEvent) -> None:
        message = event_message(event)
        publish_confirmed(
            self._app,
            message.body,
            exchange=message.exchange,
            routing_key=message.routing_key,
            headers=message.headers,
            declare=[event_exchange],
            **message.properties,
        )


class PublishingOutbound:
    """The Outbound of the embedded broker (which has no confirms to batch): publishes on
    the calling thread and marks the row sent; what the broker does not take, or a mark the
    ledger refuses, is left to the outbox relay, as the event pump leaves it."""

    def __init__(
        self, publisher: EventPublisher, mark_sent_many: Callable[[list[int]], None]
    ) -> None:
        self._publisher = publisher
        self._mark_sent_many = mark_sent_many

    def send(self, row_id: int, event: OutboxEvent) -> None:
        try:
            self._publisher.publish(event)
            self._mark_sent_many([row_id])
        except (PublishFailed, SQLAlchemyError) as exc:
            log.warning(
                "event %s for request %s left to the outbox relay: %s",
                event.event_id,
                event.request_id,
                exc,
            )


class DeadLetters:
    """Puts a message nobody can act on where an operator can inspect and replay it: the queue
    debits.dead-letter, from which the dead-letter keeper moves it into the ledger."""

    def __init__(self, app: Celery) -> None:
        self._app = app

    def send(
        self,
        body: bytes | str,
        *,
        reason: str,
        stage: str,
        headers: dict[str, Any] | None = None,
        content_type: str | None = None,
    ) -> None:
        # Renamed, so no kombu client inflates the dead letter when it reads it.
        kept = {k: v for k, v in defused(headers or {}).items() if isinstance(v, str | int | float)}
        raw = body if isinstance(body, bytes) else body.encode()
        publish_confirmed(
            self._app,
            raw,
            exchange=dead_letter_exchange,
            routing_key=COMMAND_ROUTING_KEY,
            content_type=content_type or "application/octet-stream",
            content_encoding="binary",
            headers={
                **kept,
                REASON_HEADER: reason[:500],
                STAGE_HEADER: stage,
                DEAD_LETTER_ID_HEADER: uuid.uuid4().hex,
                DEAD_LETTERED_AT_HEADER: f"{time.time():.3f}",
            },
            declare=[dead_letter_exchange],
        )
        log.warning("dead-lettered a message at %s: %s", stage, reason)
