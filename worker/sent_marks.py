"""Marks published events sent in the outbox, in batches, from one background thread.

Marking a row sent is bookkeeping for the outbox relay, not part of the debit: the event is
already in RabbitMQ's hands, and the relay only looks at rows left unsent for 10 s. So the
worker threads hand the row ids here and go on; every 100 ms one statement marks all of
them. A mark lost with its process (SIGKILL) or with the database leaves the row unsent,
and the relay publishes that event again after its grace: a duplicate with the same event
id, which consumers already deduplicate (events are at-least-once). A worker that stops
normally writes its last marks on the way out.
"""

from __future__ import annotations

import atexit
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Final

from sqlalchemy.exc import SQLAlchemyError

log = logging.getLogger(__name__)

LINGER_SECONDS: Final = 0.1  # how long a batch collects marks before it is written
MAX_BATCH: Final = 1000
_CLOSE: Final = -1  # row ids are positive


class SentMarks:
    """Callable with a row id, like `OutboxStore.mark_sent`, but writes later in batches."""

    def __init__(
        self,
        mark_many: Callable[[list[int]], None],
        *,
        linger_seconds: float = LINGER_SECONDS,
        max_batch: int = MAX_BATCH,
    ) -> None:
        self._mark_many = mark_many
        self._linger = linger_seconds
        self._max_batch = max_batch
        self._queue: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    def __call__(self, row_id: int) -> None:
        if self._thread is None:
            self._start()
        self._queue.put(row_id)

    def close(self, timeout: float = 5.0) -> None:
        """Write what is queued, then end the thread."""
        thread = self._thread
        if thread is None or not thread.is_alive():
            return
        self._queue.put(_CLOSE)
        thread.join(timeout)
        if thread.is_alive():
            log.warning("sent marks: not written within %.0f s; the relay resends them", timeout)

    def _start(self) -> None:
        # Started on first use, so in the process that marks (after any fork).
        with self._start_lock:
            if self._thread is not None:
                return
            self._thread = threading.Thread(target=self._run, name="sent-marks", daemon=True)
            self._thread.start()
            atexit.register(self.close)

    def _run(self) -> None:
        while True:
            batch, closing = self._collect()
            if batch:
                self._write(batch)
            if closing:
                return

    def _collect(self) -> tuple[list[int], bool]:
        first = self._queue.get()
        if first == _CLOSE:
            return self._drain([]), True
        batch = [first]
        deadline = time.monotonic() + self._linger
        while len(batch) < self._max_batch:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                row_id = self._queue.get(timeout=remaining)
            except queue.Empty:
                break
            if row_id == _CLOSE:
                return self._drain(batch), True
            batch.append(row_id)
        return batch, False

    def _drain(self, batch: list[int]) -> list[int]:
        while True:
            try:
                row_id = self._queue.get_nowait()
            except queue.Empty:
                return batch
            if row_id != _CLOSE:
                batch.append(row_id)

    def _write(self, batch: list[int]) -> None:
        try:
            self._mark_many(batch)
        except SQLAlchemyError as exc:
            log.warning(
                "sent marks: %d outbox rows not marked sent (%s); the relay publishes them "
                "again (same event ids)",
                len(batch),
                exc,
            )
        except Exception:  # a bug: keep marking the next batches, and say so loudly
            log.exception("sent marks: %d outbox rows not marked sent", len(batch))
