"""RabbitMQ → first attempt. Commands are plain JSON from any AMQP client, which a Celery task
queue would drop as "unknown message"; this consumer hands each one to the worker's thread
pool, which admits it and runs its first attempt (attempts.py). A command is acked only once
that attempt has ended or scheduled the next one, so a worker that dies mid-attempt leaves it
to be delivered again; one that can never be processed is dead-lettered with the reason."""

from __future__ import annotations

import functools
import logging
import queue
import time
from concurrent.futures import Future, wait
from typing import Any, Final

from celery import bootsteps
from kombu import Consumer, Message
from kombu.common import ignore_errors

from worker.bootstrap import runtime_of
from worker.ops import metrics
from worker.transport.attempts import Delivery, Settle, dead_letter, run_first_attempt
from worker.transport.authentication import RECEIVED_AT_HEADER, carried_headers
from worker.transport.intake_brake import IntakeBrake
from worker.transport.plain_consumer import PlainConsumer, refusal
from worker.transport.topology import BROKER_ERRORS, command_queue, declare_all, is_embedded

log = logging.getLogger(__name__)

# Commands stay unacked for their whole first attempt. A few more than the threads keep
# every thread busy while the next commands are on their way, without hoarding commands
# that another worker process could take.
SPARE_PREFETCH: Final = 8
# A stopping worker lets running first attempts finish and ack their commands before the
# channel closes; past this, the rest are delivered again (the ledger makes that harmless).
STOP_GRACE_SECONDS: Final = 30.0


class CommandIntake(bootsteps.ConsumerStep):
    brake: IntakeBrake | None = None

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.parent_app = parent.app
        self._pool: Any = None
        self._hub: Any = None
        self._in_flight: set[Future[Any]] = set()
        # Filled by worker threads, emptied on the event loop: py-amqp channels are not
        # thread-safe, so every ack and requeue is sent from the loop's own thread.
        self._to_settle: queue.SimpleQueue[tuple[Message, Settle]] = queue.SimpleQueue()

    def start(self, c: Any) -> None:
        self._pool = c.pool
        # On RabbitMQ the worker runs an event loop; the embedded broker has none, and its
        # commands are settled by the worker threads themselves.
        if not is_embedded(c.connection.as_uri()):
            self._hub = c.hub
            self.brake = IntakeBrake(c.hub, lambda: self.consumers or [], errors=BROKER_ERRORS)
        super().start(c)
        metrics.intake_consuming(True)

    # Order matters: stop taking commands, let running first attempts settle their commands
    # on the still-open channel, only then close the channel (Celery's part).
    def stop(self, c: Any) -> None:
        for consumer in self.consumers or []:
            ignore_errors(c.connection, consumer.cancel)
        self._finish_in_flight()
        super().stop(c)

    def shutdown(self, c: Any) -> None:
        self._finish_in_flight()
        super().shutdown(c)

    def _finish_in_flight(self) -> None:
        metrics.intake_consuming(False)
        if self.brake is not None:
            self.brake.release()
            self.brake = None
        waiting = [f for f in list(self._in_flight) if not f.cancel()]
        if waiting:
            log.info("intake: waiting for %d first attempts to end", len(waiting))
            _, unfinished = wait(waiting, timeout=STOP_GRACE_SECONDS)
            if unfinished:
                log.warning(
                    "intake: %d first attempts still running after %.0f s; their commands "
                    "will be delivered again",
                    len(unfinished),
                    STOP_GRACE_SECONDS,
                )
        self._in_flight.clear()
        self._settle_all()
        self._hub = None

    def get_consumers(self, channel: Any) -> list[Consumer]:
        declare_all(channel)  # every worker (re)declares what it consumes and publishes to
        prefetch = runtime_of(self.parent_app).settings.concurrency + SPARE_PREFETCH
        channel.basic_qos(0, prefetch, False)
        return [PlainConsumer(channel, queues=[command_queue], on_message=self.on_message)]

    def on_message(self, message: Message) -> None:
        runtime = runtime_of(self.parent_app)
        body = message.body or b""
        # The signature's headers travel with the body; the attempt admits the command
        # (verified, parsed) before the ledger or Stripe see anything. The receipt time is
        # ours, never the producer's.
        delivery = Delivery(
            body.encode("utf-8") if isinstance(body, str) else body,
            carried_headers(message.headers) | {RECEIVED_AT_HEADER: f"{time.time():.3f}"},
            message.headers or {},  # as it came: only a dead letter reads it
            message.content_type,
        )
        refused = refusal(message.headers)
        if refused is not None:
            _settle(message, dead_letter(runtime, delivery, refused))
            return
        result = self._pool.apply_async(
            run_first_attempt,
            args=(self.parent_app, runtime, delivery),
            callback=functools.partial(self._attempt_ended, message),
        )
        future = getattr(result, "f", None)  # the threads pool's; others finish inline
        if isinstance(future, Future) and not future.done():
            self._in_flight.add(future)
            future.add_done_callback(self._in_flight.discard)

    def _attempt_ended(self, message: Message, settle: Settle) -> None:
        """On the worker thread that ran the attempt."""
        hub = self._hub  # read once: a stopping intake clears it
        if hub is None:
            _settle(message, settle)
            return
        self._to_settle.put((message, settle))
        hub.call_soon(self._settle_all)

    def _settle_all(self) -> None:
        """On the event loop (or the stopping worker's thread, the loop ended)."""
        while True:
            try:
                message, settle = self._to_settle.get_nowait()
            except queue.Empty:
                return
            _settle(message, settle)
            if self.brake is None:
                continue
            # A command given back means the next attempt could not be scheduled (the
            # broker or the ledger in trouble): pause rather than spin through its
            # quorum queue's delivery limit.
            if settle is Settle.ACK:
                self.brake.healthy()
            else:
                self.brake.trouble()


def _settle(message: Message, settle: Settle) -> None:
    """Ack or requeue a command. If its channel is gone the broker redelivers it anyway."""
    try:
        if settle is Settle.ACK:
            message.ack()
        elif settle is Settle.REJECT:
            message.reject(requeue=False)
        else:
            message.requeue()
    except BROKER_ERRORS as exc:
        log.info("command %s not settled (%r); the broker will redeliver it", message, exc)
