"""Publishes events and dead letters to RabbitMQ with confirms and `mandatory`, so a publish
returns only once the broker has taken responsibility for the message."""

from __future__ import annotations

import logging
from typing import Any

from amqp.exceptions import AMQPError
from celery import Celery
from kombu.exceptions import KombuError

from schemas.topology import COMMAND_ROUTING_KEY, EVENT_CONTENT_TYPE
from worker.ledger import OutboxEvent
from worker.plain_consumer import defused
from worker.ports import PublishFailed
from worker.topology import dead_letter_exchange, event_exchange

log = logging.getLogger(__name__)

BROKER_ERRORS = (KombuError, AMQPError, OSError)
_RETRY_POLICY = {"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5, "interval_max": 2}


def publish_confirmed(app: Celery, body: str | bytes, **options: Any) -> None:
    try:
        with app.producer_or_acquire() as producer:
            producer.publish(
                body,
                delivery_mode=2,
                mandatory=True,
                retry=True,
                retry_policy=_RETRY_POLICY,
                **options,
            )
    except BROKER_ERRORS as exc:
        raise PublishFailed(f"broker did not confirm: {exc!r}") from exc


class KombuEventPublisher:
    def __init__(self, app: Celery) -> None:
        self._app = app

    def publish(self, event: OutboxEvent) -> None:
        publish_confirmed(
            self._app,
            event.body,
            exchange=event_exchange,
            routing_key=event.routing_key,
            content_type=EVENT_CONTENT_TYPE,
            content_encoding="utf-8",
            message_id=event.event_id,
            headers={"ce-id": event.event_id, "ce-type": event.event_type},
            declare=[event_exchange],
        )


class DeadLetters:
    """Puts a message nobody can act on where an operator can inspect and replay it."""

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
                "x-debit-worker-reason": reason[:500],
                "x-debit-worker-stage": stage,
            },
            declare=[dead_letter_exchange],
        )
        log.warning("dead-lettered a message at %s: %s", stage, reason)
