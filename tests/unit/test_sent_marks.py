"""Published events are marked sent in batches off the worker threads; a lost batch only
means the relay publishes those events again."""

from __future__ import annotations

import logging
import threading
import time

import pytest
from sqlalchemy.exc import OperationalError

from worker.sent_marks import SentMarks


class RecordingMarks:
    """Stands in for OutboxStore.mark_sent_many; `fail_next` makes the next write fail as a
    database outage would."""

    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.fail_next = False
        self.written = threading.Event()

    def __call__(self, row_ids: list[int]) -> None:
        if self.fail_next:
            self.fail_next = False
            raise OperationalError("UPDATE outbox", {}, Exception("server closed the connection"))
        self.batches.append(list(row_ids))
        self.written.set()


def test_marks_from_many_threads_are_written_together_in_one_statement() -> None:
    # Given marks that linger long enough to collect every thread's row
    store = RecordingMarks()
    marks = SentMarks(store, linger_seconds=0.5)
    # When eight worker threads each mark their row sent
    threads = [threading.Thread(target=marks, args=(row_id,)) for row_id in range(1, 9)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then one write marks all eight
    assert store.written.wait(5)
    assert [sorted(batch) for batch in store.batches] == [list(range(1, 9))]
    marks.close()


def test_closing_writes_the_marks_still_waiting() -> None:
    # Given marks that would otherwise wait a minute to be written
    store = RecordingMarks()
    marks = SentMarks(store, linger_seconds=60)
    marks(11)
    marks(12)
    # When the worker stops
    marks.close(timeout=5)
    # Then they are written on the way out
    assert store.batches == [[11, 12]]


def test_a_batch_the_database_refused_is_left_to_the_relay_and_the_next_is_written(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Given a database that refuses the next write
    store = RecordingMarks()
    store.fail_next = True
    marks = SentMarks(store, linger_seconds=0.01)
    # When a row is marked, its write is refused, and then another row is marked
    with caplog.at_level(logging.WARNING, logger="worker.sent_marks"):
        marks(21)
        deadline = time.monotonic() + 5
        while store.fail_next and time.monotonic() < deadline:
            time.sleep(0.01)
        marks(22)
        marks.close(timeout=5)
    # Then the refused one is reported as left to the relay, and the same thread writes the
    # next one
    assert "1 outbox rows not marked sent" in caplog.text
    assert "the relay publishes them again" in caplog.text
    assert store.batches == [[22]]
