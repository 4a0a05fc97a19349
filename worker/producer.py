"""For Python producers: publish a DebitRequested the way the contract asks (persistent,
publisher confirms, `mandatory` so an unroutable command raises instead of vanishing),
signed with the producer's key (schemas/signing.py)."""

from __future__ import annotations

from types import TracebackType
from typing import Any

from kombu import Connection

from schemas.commands import DebitRequested
from schemas.signing import Signer
from schemas.topology import COMMAND_ROUTING_KEY, CONTENT_TYPE
from worker.settings import Settings, SettingsError
from worker.transport.topology import command_exchange


def signer_from(settings: Settings) -> Signer:
    """The key DEBIT_WORKER_PRODUCER_ID / _KEY_ID / _SECRET name (env or secret files)."""
    if not (settings.producer_id and settings.producer_key_id and settings.producer_secret):
        raise SettingsError(
            "DEBIT_WORKER_PRODUCER_ID, DEBIT_WORKER_PRODUCER_KEY_ID and "
            "DEBIT_WORKER_PRODUCER_SECRET must all be set to sign commands"
        )
    return Signer(
        settings.producer_id, settings.producer_key_id, settings.producer_secret.get_secret_value()
    )


class DebitProducer:
    """One connection, reused; not thread-safe (make one per thread). With a `signer`, every
    command is signed; without one, commands go out unsigned (refused by a worker that
    requires signatures)."""

    def __init__(self, broker_url: str, signer: Signer | None = None) -> None:
        self._connection = Connection(broker_url, transport_options={"confirm_publish": True})
        self._producer = self._connection.Producer()
        self._signer = signer

    def publish(self, command: DebitRequested, *, headers: dict[str, Any] | None = None) -> None:
        self.publish_raw(
            command.model_dump_json(exclude_none=True).encode("utf-8"),
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
        """Any bytes, as a foreign producer might send them (used by tests and tools); signed
        when this producer has a signer."""
        raw = body.encode("utf-8") if isinstance(body, str) else body
        signed = self._signer.headers_for(raw) if self._signer else {}
        self._producer.publish(
            raw,
            exchange=command_exchange,
            routing_key=COMMAND_ROUTING_KEY,
            content_type=content_type,
            content_encoding="utf-8" if content_type == CONTENT_TYPE else "binary",
            delivery_mode=2,
            mandatory=True,
            message_id=message_id,
            headers={**(headers or {}), **signed},
            retry=True,
            retry_policy={"max_retries": 3, "interval_start": 0.2, "interval_step": 0.5},
            # No declare: producers may only publish (their broker user cannot configure).
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
