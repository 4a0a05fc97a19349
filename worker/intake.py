"""RabbitMQ → task. Commands are plain JSON from any AMQP client, which a Celery task queue
would drop as "unknown message"; this consumer runs inside the worker, screens each one, hands
it to the processing task (a confirmed publish), and only then acks it. Nothing is lost:
a message that cannot be handed over is requeued; one that can never be processed goes to
the dead-letter queue with the reason in its headers."""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any, Final

from celery import bootsteps
from kombu import Consumer, Message
from kombu.common import ignore_errors

from worker.authentication import RECEIVED_AT_HEADER, carried_headers
from worker.bootstrap import runtime_of
from worker.handover import ConfirmingHandover
from worker.intake_brake import IntakeBrake
from worker.parsing import Undeliverable, screen
from worker.ports import PublishFailed
from worker.publisher import BROKER_ERRORS
from worker.tasks import PROCESS_TASK
from worker.topology import TASK_QUEUE, command_queue, declare_all

log = logging.getLogger(__name__)

# Commands stay unacked until their hand-over is confirmed (a quorum-queue commit away), so
# the window must cover a confirm's round trip at full rate, without hoarding commands that
# another worker host could take.
INTAKE_PREFETCH: Final = 128


class CommandIntake(bootsteps.ConsumerStep):
    handover: ConfirmingHandover | None = None
    brake: IntakeBrake | None = None

    def start(self, c: Any) -> None:
        # On RabbitMQ the worker runs an event loop: hand-overs are confirmed asynchronously
        # on it. The embedded (memory) transport has none, and confirms are immediate there.
        if c.hub is not None and c.connection.transport.implements.asynchronous:
            self.brake = IntakeBrake(c.hub, lambda: self.consumers or [], errors=BROKER_ERRORS)
            self.handover = ConfirmingHandover(
                self.parent_app,
                c.hub,
                on_trouble=self.brake.trouble,
                on_healthy=self.brake.healthy,
            )
            self.handover.start()
            log.info("intake: commands handed over with asynchronous publisher confirms")
        else:
            log.info("intake: commands handed over one confirmed publish at a time")
        super().start(c)

    # Order matters: stop taking commands, let the hand-over collect its last confirms and
    # ack them on the still-open channel, only then close the channel (Celery's part).
    def stop(self, c: Any) -> None:
        for consumer in self.consumers or []:
            ignore_errors(c.connection, consumer.cancel)
        self._close_handover()
        super().stop(c)

    def shutdown(self, c: Any) -> None:
        self._close_handover()
        super().shutdown(c)

    def _close_handover(self) -> None:
        if self.brake is not None:
            self.brake.release()
            self.brake = None
        if self.handover is not None:
            self.handover.close()
            self.handover = None

    def get_consumers(self, channel: Any) -> list[Consumer]:
        declare_all(channel)  # every worker (re)declares what it consumes and publishes to
        channel.basic_qos(0, INTAKE_PREFETCH, False)
        return [Consumer(channel, queues=[command_queue], on_message=self.on_message)]

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.parent_app = parent.app

    def on_message(self, message: Message) -> None:
        runtime = runtime_of(self.parent_app)
        body: bytes | str = message.body or b""
        try:
            request_id = screen(body)
        except Undeliverable as exc:
            self._dead_letter(message, str(exc))
            return
        text = body.decode("utf-8") if isinstance(body, bytes) else body
        # The signature's headers travel with the body; the task verifies them before the
        # ledger or Stripe see anything. The receipt time is ours, never the producer's.
        headers = carried_headers(message.headers) | {RECEIVED_AT_HEADER: f"{time.time():.3f}"}
        task_id = f"{request_id}:{uuid.uuid4().hex[:12]}"
        if self.handover is not None:
            self.handover.forward(message, task_id, (text, headers))
            return
        try:
            self.parent_app.tasks[PROCESS_TASK].apply_async(
                args=[text, headers], task_id=task_id, queue=TASK_QUEUE
            )
        except (PublishFailed, *BROKER_ERRORS) as exc:
            log.warning("could not hand over %s (%s); requeued", request_id, exc)
            message.requeue()
            return
        message.ack()
        log.debug("request %s handed to the workers (host %s)", request_id, runtime.identity)

    def _dead_letter(self, message: Message, reason: str) -> None:
        runtime = runtime_of(self.parent_app)
        try:
            runtime.dead_letters.send(
                message.body or b"",
                reason=reason,
                stage="intake",
                headers=dict(message.headers or {}),
                content_type=message.content_type,
            )
        except PublishFailed:
            # Rejecting without requeue lets the queue's own dead-lettering take it.
            log.warning("dead-letter publish failed; rejecting to the queue's DLX instead")
            message.reject(requeue=False)
            return
        message.ack()
