"""For Python producers: publish a DebitRequested the way the contract asks (persistent,
publisher confirms, `mandatory` so an unroutable command raises instead of vanishing)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from kombu import Connection

from schemas.commands import DebitRequested
from schemas.topology import COMMAND_ROUTING_KEY, CONTENT_TYPE
from worker.topology import command_exchange


class DebitProducer:
    """One connection, reused; not thread-safe (make one per thread)."""

    def __init__(self, broker_url: str) -> None:
        self._connection = Connection(broker_url, transport_options={"confirm_publish": True})
        self._producer = self._connection.Producer()

    def publish(self, command: DebitRequested, *, headers: dict[str, Any] | None = None) -> None:
        self.publish_raw(
            command.model_dump_json(exclude_none=True),
            headers=headers,
            message_id=command.request_id,
        )

    def publish_raw(
        self,
        body: str | bytes,
        *,
        headers: dict[str, Any] | None = None,
        message_id: str | None = None,
        content_type: str = CONTENT_TYPE,
    ) -> None:
        """Any bytes, as a foreign producer might send them (used by tests and tools)."""
        self._producer.publish(
            body,
            exchange=command_exchange,
            routing_key=COMMAND_ROUTING_KEY,
            content_type=content_type,
            content_encoding="utf-8" if isinstance(body, str) else "binary",
            delivery_mode=2,
            mandatory=True,
            message_id=message_id,
            headers=headers or {},
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            declare=[command_exchange],
        )

    def close(self) -> None:
        self._connection.release()

    def __enter__(self) -> DebitProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def publish_debit(command: DebitRequested, *, broker_url: str) -> None:
    """One-shot helper; for many commands keep a DebitProducer open instead."""
    with DebitProducer(broker_url) as producer:
        producer.publish(command)
