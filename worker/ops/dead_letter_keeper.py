"""The dead-letter keeper: moves every message that reaches `debits.dead-letter` into the
ledger (table dead_letters), where listing it never touches it again.

The queue stays the transport (the worker's DeadLetters and RabbitMQ's own dead-lettering
both end there); the ledger is the store. A message is acknowledged only once its row is
committed, so a crash in between leaves it in the queue, and its second keep writes nothing
(the row's dedupe key). The keeper never rejects and never drops: it asks the ledger before
taking anything, and a message it took but could not store is held, unacknowledged, and
stored at the next round (or returned by RabbitMQ if the connection ends).

Runs in a background thread of every worker process, and at the start of each `dlq` command.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final

from worker.adapters.ledger import utc_now
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE
from worker.adapters.ledger.dead_letters import DeadLetterStore, NewDeadLetter
from worker.bootstrap import Runtime
from worker.ops.background import PeriodicStep
from worker.ops.dead_letter_messages import dead_letter_row
from worker.transport.topology import BROKER_ERRORS, dead_letter_queue

log = logging.getLogger(__name__)

# Messages moved in one round at most, so that a flood does not keep one round going.
ROUND_LIMIT: Final = 500
# The keeper's connection sends no heartbeats (it is idle between rounds): a broker that
# stops answering fails the round after this long instead of hanging its thread.
_SOCKET_TIMEOUTS: Final = {"read_timeout": 30.0, "write_timeout": 30.0}


def keep_dead_letters(
    channel: Any,
    store: DeadLetterStore,
    *,
    held: list[Any] | None = None,
    limit: int = ROUND_LIMIT,
    clock: Callable[[], datetime] = utc_now,
) -> int:
    """Moves up to `limit` messages from the dead-letter queue on `channel` into `store`;
    returns how many left the queue. `held`: messages taken on this channel and not yet
    stored (kept by the caller across rounds), stored first. Raises what the ledger or the
    broker raises; whatever was taken and not stored is then in `held`."""
    store.check()  # the ledger answers: only now is anything taken
    waiting = [] if held is None else held
    moved = 0
    while moved < limit:
        message = waiting[0] if waiting else channel.basic_get(dead_letter_queue.name, no_ack=False)
        if message is None:
            break
        if not waiting:
            waiting.append(message)
        store.keep(_row(message, store, clock()))
        channel.basic_ack(message.delivery_tag)
        waiting.pop(0)
        moved += 1
    return moved


def _row(message: Any, store: DeadLetterStore, now: datetime) -> NewDeadLetter:
    """What py-amqp's and kombu's in-memory messages both offer."""
    info = getattr(message, "delivery_info", None) or {}
    return dead_letter_row(
        message.body,
        message.headers,
        routing_key=str(info.get("routing_key") or ""),
        content_type=getattr(message, "content_type", None),
        producer_of=store.producer_of,
        now=now,
    )


def declared_channel(connection: Any) -> Any:
    """A channel of `connection` on which the dead-letter queue exists."""
    channel = connection.channel()
    dead_letter_queue(channel).declare()
    return channel


class DeadLetterKeeperStep(PeriodicStep):
    """Runs the keeper in a background thread of every worker process, on one broker
    connection of its own, opened again after a broker error."""

    thread_name = "dead-letter-keeper"
    first_round_at_start = True  # what waits in the queue is listed soon after a start

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._connection: Any = None
        self._channel: Any = None
        self._held: list[Any] = []
        self._ledger_answered = True

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.dead_letter_keep_interval_seconds

    def run_round(self, runtime: Runtime) -> None:
        store = DeadLetterStore(runtime.services().ledger.engine, utc_now)
        try:
            moved = keep_dead_letters(self._open(), store, held=self._held)
        except BROKER_ERRORS as exc:
            log.warning("dead-letter keeper: broker error (%s); connecting again next round", exc)
            self._close()
            return
        except LEDGER_UNAVAILABLE as exc:
            if self._ledger_answered:
                log.warning("dead-letter keeper: the ledger does not answer (%s); waiting", exc)
            self._ledger_answered = False
            return
        self._ledger_answered = True
        if moved:
            log.info("dead-letter keeper: kept %d dead letter(s) in the ledger", moved)

    def stop(self, parent: Any) -> None:
        super().stop(parent)
        self._close()

    terminate = stop
    shutdown = stop

    def _open(self) -> Any:
        if self._channel is None:
            self._connection = self._app.connection_for_write(transport_options=_SOCKET_TIMEOUTS)
            self._channel = declared_channel(self._connection)
        return self._channel

    def _close(self) -> None:
        """Messages held unacknowledged go back to the queue with the connection."""
        connection, self._connection, self._channel = self._connection, None, None
        self._held.clear()
        if connection is not None:
            try:
                connection.release()
            except BROKER_ERRORS as exc:  # already gone: nothing more to release
                log.debug("dead-letter keeper: closing the connection: %s", exc)
