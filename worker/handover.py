"""Hand-over of screened commands to the task queue without stalling the worker's event loop.

The intake runs on Celery's event loop, which also delivers tasks to the worker threads and
sends their acks. Waiting there for the broker's confirm of every hand-over (one round trip,
including a quorum-queue commit) capped the whole worker at roughly one command per round
trip. Here the task messages go out on a connection of their own in confirm mode without
waiting; the broker's confirms arrive on the same event loop, and only then is the command
acked. The guarantee is unchanged: a command is acked only after the broker has taken
responsibility for its task. A nack, a return (unroutable), a lost connection or a confirm
that never comes puts the command back on its queue instead; a command whose task was in
fact stored is then handed over twice, which the ledger's claim makes harmless.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from celery import Celery
from kombu import Connection, Message, Producer

from worker.publisher import BROKER_ERRORS
from worker.tasks import PROCESS_TASK
from worker.topology import TASK_EXCHANGE, TASK_ROUTING_KEY, declare_all

log = logging.getLogger(__name__)

# A hand-over unconfirmed for this long means the broker is in trouble: start again on a
# fresh connection, and give the commands back to their queue.
CONFIRM_TIMEOUT_SECONDS: Final = 30.0
SOCKET_TIMEOUT_SECONDS: Final = 10.0
# No retry inside the publish: a reconnect would open a channel outside confirm mode (the
# command is requeued instead). Mandatory: an unroutable task comes back, never vanishes.
_PUBLISH: Final[dict[str, Any]] = {"retry": False, "mandatory": True}
PERSISTENT: Final = 2  # delivery mode: the task survives a broker restart
_DRAIN_BURST: Final = 256  # frames read per wake-up before yielding to the rest of the loop


@dataclass(slots=True)
class _Pending:
    command: Message
    task_id: str
    sent_at: float
    returned: bool = False


class ConfirmingHandover:
    """Publishes task messages with asynchronous publisher confirms on `hub`, the worker's
    event loop, and settles each command (ack or requeue) when its confirm arrives."""

    def __init__(
        self,
        app: Celery,
        hub: Any,
        *,
        connect: Callable[[], Connection] | None = None,
        declare: Callable[[Any], None] = declare_all,
        clock: Callable[[], float] = time.monotonic,
        on_trouble: Callable[[], None] = lambda: None,
        on_healthy: Callable[[], None] = lambda: None,
    ) -> None:
        # on_trouble: commands were given back because hand-overs fail (the intake pauses);
        # on_healthy: a hand-over was confirmed.
        self._on_trouble = on_trouble
        self._on_healthy = on_healthy
        self._app = app
        self._hub = hub
        self._connect = connect or self._connect_to_broker
        self._declare = declare
        self._clock = clock
        self._connection: Connection | None = None
        self._channel: Any = None
        self._producer: Producer | None = None
        self._fd: int | None = None
        self._next_tag = 1
        self._pending: OrderedDict[int, _Pending] = OrderedDict()
        self._by_task: dict[str, int] = {}
        self._timer: Any = None
        self._redeclare = False
        self._origin = f"debit-worker.{os.getpid()}@{socket.gethostname()}"

    @property
    def in_flight(self) -> int:
        return len(self._pending)

    def start(self) -> None:
        self._timer = self._hub.call_repeatedly(5.0, self.check_stalled)

    def forward(self, command: Message, task_id: str, args: tuple[Any, ...]) -> None:
        """Publish the task for `command`; its ack (or requeue) follows its confirm."""
        try:
            producer = self._ensure_open()
            if self._redeclare:
                self._redeclare = False
                self._declare(self._channel)
            self._send(producer, task_id, args)
        except BROKER_ERRORS as exc:
            log.warning("could not hand over task %s (%s); requeued", task_id, exc)
            _settle(command, ack=False)
            self._reset(f"publish failed: {exc!r}", trouble=False)
            self._on_trouble()  # once, whether or not others were given back with it
            return
        tag = self._next_tag
        self._next_tag += 1
        self._pending[tag] = _Pending(command, task_id, self._clock())
        self._by_task[task_id] = tag

    def _send(self, producer: Producer, task_id: str, args: tuple[Any, ...]) -> None:
        # Celery's own protocol-2 message, published straight to the task exchange. Going
        # through `apply_async` instead (routing, option merging, a declare check, a result
        # object, and a repr of the whole command for the `argsrepr` header) was about a
        # third of the intake's CPU per command. The repr names the task instead: the command
        # itself is the body, and copying it into a header doubled the message.
        message = self._app.amqp.as_task_v2(
            task_id,
            PROCESS_TASK,
            args=args,
            argsrepr=f"(command of task {task_id})",
            kwargsrepr="{}",
            origin=self._origin,
        )
        producer.publish(
            message.body,
            exchange=TASK_EXCHANGE,
            routing_key=TASK_ROUTING_KEY,
            headers=message.headers,
            serializer="json",
            delivery_mode=PERSISTENT,
            **message.properties,
            **_PUBLISH,
        )

    def check_stalled(self) -> None:
        if not self._pending:
            return
        oldest = next(iter(self._pending.values()))
        waited = self._clock() - oldest.sent_at
        if waited > CONFIRM_TIMEOUT_SECONDS:
            self._reset(f"no confirm for {waited:.0f} s")

    def close(self, grace_seconds: float = 5.0) -> None:
        """Wait up to `grace_seconds` for outstanding confirms, then give back the rest."""
        if self._timer is not None:
            self._hub.timer.cancel(self._timer)
            self._timer = None
        deadline = self._clock() + grace_seconds
        lost = False
        while self._pending and self._connection is not None and self._clock() < deadline:
            try:
                self._connection.drain_events(timeout=0.2)
            except TimeoutError:
                continue
            except BROKER_ERRORS as exc:
                log.warning("hand-over connection lost while closing: %r", exc)
                lost = True
                break
        # Stopping is not trouble: nothing to pause.
        self._reset("worker stopping", graceful=not (lost or self._pending), trouble=False)

    # --- broker callbacks, on the event loop ---

    def _on_ack(self, delivery_tag: int, multiple: bool) -> None:
        taken = self._take(delivery_tag, multiple)
        if any(pending.returned for pending in taken):
            self._on_trouble()
        elif taken:
            self._on_healthy()
        for pending in taken:
            if pending.returned:
                # The task queue or its binding is gone (deleted by hand, a broker restored
                # without it): declare the topology again before the next hand-over.
                log.warning(
                    "task %s was unroutable; command requeued, topology to be declared again",
                    pending.task_id,
                )
                self._redeclare = True
            _settle(pending.command, ack=not pending.returned)

    def _on_nack(self, delivery_tag: int, multiple: bool) -> None:
        for pending in self._take(delivery_tag, multiple):
            log.warning("broker refused task %s; command requeued", pending.task_id)
            _settle(pending.command, ack=False)
        self._on_trouble()

    def _on_return(self, exc: Exception, exchange: str, routing_key: str, message: Any) -> None:
        task_id = (getattr(message, "properties", None) or {}).get("correlation_id")
        tag = self._by_task.get(str(task_id))
        log.warning("task %s returned by %s/%s: %s", task_id, exchange, routing_key, exc)
        if tag is not None:
            self._pending[tag].returned = True  # its ack follows; the command is requeued

    def _on_readable(self) -> None:
        connection = self._connection
        if connection is None:
            return
        try:
            for _ in range(_DRAIN_BURST):
                connection.drain_events(timeout=0)
        except TimeoutError:
            return
        except BROKER_ERRORS as exc:
            self._reset(f"connection lost: {exc!r}")
            return
        # More may be waiting already decrypted (TLS), where the socket won't wake us again.
        self._hub.call_soon(self._on_readable)

    # --- connection ---

    def _ensure_open(self) -> Producer:
        if self._producer is not None:
            return self._producer
        connection = self._connect()
        try:
            channel: Any = connection.default_channel  # py-amqp's channel: confirms, events
            channel.confirm_select()
            channel.events["basic_ack"].add(self._on_ack)
            channel.events["basic_nack"].add(self._on_nack)
            channel.events["basic_return"].add(self._on_return)
            fd = connection.connection.sock.fileno()
        except BROKER_ERRORS:
            _drop(connection)
            raise
        self._fd = fd
        self._hub.add_reader(self._fd, self._on_readable)
        self._connection, self._channel = connection, channel
        self._producer = Producer(channel)
        self._next_tag = 1  # confirms are numbered per channel, from 1
        return self._producer

    def _connect_to_broker(self) -> Connection:
        # Celery's own connections wait for each confirm (confirm_publish); this one must not.
        # Socket timeouts: a broker that stops reading (memory or disk alarm) must not hold
        # the event loop in a write, or in a close handshake, for ever.
        connection = self._app.connection_for_write(
            transport_options={
                "confirm_publish": False,
                "write_timeout": SOCKET_TIMEOUT_SECONDS,
                "read_timeout": SOCKET_TIMEOUT_SECONDS,
            }
        )
        connection.ensure_connection(max_retries=1)
        return connection

    def _reset(self, why: str, *, graceful: bool = False, trouble: bool = True) -> None:
        """Forget the connection; every unconfirmed command goes back to its queue (and,
        with `trouble`, the intake hears of it). Only a graceful reset says goodbye to the
        broker: after a failure the socket is just dropped, since a close handshake with a
        broker in trouble could wait."""
        gave_back = bool(self._pending)
        if gave_back:
            log.warning(
                "hand-over: %s; requeueing %d unconfirmed commands", why, len(self._pending)
            )
        for pending in self._pending.values():
            _settle(pending.command, ack=False)
        self._pending.clear()
        self._by_task.clear()
        if self._fd is not None:
            self._hub.remove_reader(self._fd)
            self._fd = None
        if self._connection is not None:
            if graceful:
                try:
                    self._connection.close()
                except BROKER_ERRORS as exc:
                    log.debug("hand-over connection closed with %r", exc)
                    _drop(self._connection)
            else:
                _drop(self._connection)
        self._connection = self._channel = self._producer = None
        if gave_back and trouble:
            self._on_trouble()

    def _take(self, delivery_tag: int, multiple: bool) -> list[_Pending]:
        tags = [t for t in self._pending if t <= delivery_tag] if multiple else [delivery_tag]
        taken = []
        for tag in tags:
            pending = self._pending.pop(tag, None)
            if pending is not None:
                self._by_task.pop(pending.task_id, None)
                taken.append(pending)
        return taken


def _drop(connection: Connection) -> None:
    """Close the socket without the AMQP close handshake."""
    try:
        connection.collect()
    except BROKER_ERRORS as exc:
        log.debug("hand-over connection dropped with %r", exc)


def _settle(command: Message, *, ack: bool) -> None:
    """Ack or requeue a command. If its channel is gone the broker redelivers it anyway."""
    try:
        if ack:
            command.ack()
        else:
            command.requeue()
    except BROKER_ERRORS as exc:
        log.info("command %s not settled (%r); the broker will redeliver it", command, exc)
