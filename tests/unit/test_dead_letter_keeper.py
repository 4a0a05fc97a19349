"""The dead-letter keeper moves dead letters from their queue into the ledger: acknowledged only
once stored, stored once however often they come back, never rejected nor dropped. And the
ledger's store of them: resolved once, each resolution audited."""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from sqlalchemy.exc import OperationalError

from schemas.topology import DEAD_LETTER_QUEUE
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.dead_letters import DeadLetterStore, NewDeadLetter
from worker.bootstrap import Runtime
from worker.celery_app import create_app
from worker.ops.dead_letter_keeper import DeadLetterKeeperStep, keep_dead_letters
from worker.ops.probe_endpoints import LedgerGauges
from worker.settings import load_settings
from worker.transport.publisher import DeadLetters
from worker.transport.topology import EMBEDDED_BROKER_URL, dead_letter_queue

from .fakes import FakeClock, a_world_on, migrated_ledger

OWN_ID = "0123456789abcdef0123456789abcdef"


@dataclass
class FakeMessage:
    body: bytes
    headers: dict[str, Any]
    delivery_tag: int = 0
    delivery_info: dict[str, Any] = field(default_factory=lambda: {"routing_key": "debit.x"})
    content_type: str | None = "application/octet-stream"


@dataclass
class FakeQueue:
    """debits.dead-letter as RabbitMQ 4.x keeps it: a message given back (its channel
    closed) comes again first, its x-delivery-count one higher."""

    ready: deque[FakeMessage] = field(default_factory=deque)

    def put(self, body: bytes, headers: dict[str, Any]) -> None:
        self.ready.append(FakeMessage(body, headers))


@dataclass
class FakeChannel:
    queue: FakeQueue
    ack_breaks: bool = False  # the connection is lost when the keeper acknowledges
    unacked: dict[int, FakeMessage] = field(default_factory=dict)
    acked: list[bytes] = field(default_factory=list)
    gets: int = 0

    def basic_get(self, queue: str, no_ack: bool) -> FakeMessage | None:
        assert (queue, no_ack) == (DEAD_LETTER_QUEUE, False)
        self.gets += 1
        if not self.queue.ready:
            return None
        message = self.queue.ready.popleft()
        message.delivery_tag = self.gets
        self.unacked[message.delivery_tag] = message
        return message

    def basic_ack(self, delivery_tag: int) -> None:
        if self.ack_breaks:
            raise ConnectionResetError("connection reset by peer")
        self.acked.append(self.unacked.pop(delivery_tag).body)

    def close(self) -> None:
        for message in reversed(self.unacked.values()):
            count = int(message.headers.get("x-delivery-count", 0)) + 1
            message.headers = {**message.headers, "x-delivery-count": count}
            self.queue.ready.appendleft(message)
        self.unacked.clear()


class LedgerGoesAway(DeadLetterStore):
    """The ledger answers the keeper's check, then fails the next `failures` keeps."""

    def __init__(self, store: DeadLetterStore, failures: int) -> None:
        super().__init__(store._engine, store._clock)
        self.failures = failures

    def keep(self, letter: NewDeadLetter) -> bool:
        if self.failures:
            self.failures -= 1
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return super().keep(letter)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


@pytest.fixture
def store(ledger: Ledger, clock: FakeClock) -> DeadLetterStore:
    return DeadLetterStore(ledger.engine, clock)


def worker_dead_letter() -> dict[str, Any]:
    """The headers DeadLetters gives a message it dead-letters at the intake."""
    return {
        "x-debit-worker-stage": "intake",
        "x-debit-worker-reason": "body is not JSON",
        "x-debit-worker-dead-letter-id": OWN_ID,
        "x-debit-worker-dead-lettered-at": "1765368000",
    }


def a_letter(key: str, request_id: str | None, clock: FakeClock) -> NewDeadLetter:
    return NewDeadLetter(
        dedupe_key=key,
        dead_lettered_at=clock(),
        request_id=request_id,
        producer="billing",
        stage="task",
        reason="attempts exhausted",
        routing_key="debit.requested",
        content_type="application/json",
        body=b"{}",
        headers={},
    )


# --- the keeper -----------------------------------------------------------------------------


def test_the_keeper_moves_every_dead_letter_into_the_ledger_and_empties_the_queue(
    store: DeadLetterStore,
) -> None:
    # Given a dead letter of the worker's and one RabbitMQ dead-lettered itself
    queue = FakeQueue()
    queue.put(b"not json", worker_dead_letter())
    queue.put(b'{"request_id": "r-1"}', {"x-death": [{"reason": "rejected", "queue": "q"}]})
    channel = FakeChannel(queue)
    # When the keeper runs a round
    moved = keep_dead_letters(channel, store)
    # Then both are kept as pending rows, acknowledged, and the queue is empty
    assert moved == 2
    assert [letter.body for letter in store.listed()] == [b"not json", b'{"request_id": "r-1"}']
    assert channel.acked == [b"not json", b'{"request_id": "r-1"}']
    assert not queue.ready
    assert not channel.unacked


@pytest.mark.parametrize(
    "headers",
    [worker_dead_letter(), {"x-death": [{"reason": "delivery_limit", "queue": "q"}]}],
    ids=["worker-id", "rabbitmq-hash"],
)
def test_a_keeper_that_dies_after_storing_but_before_acking_keeps_one_row(
    store: DeadLetterStore, headers: dict[str, Any]
) -> None:
    # Given a dead letter whose acknowledgement is lost with the connection
    queue = FakeQueue()
    queue.put(b"x", headers)
    broken = FakeChannel(queue, ack_breaks=True)
    with pytest.raises(ConnectionResetError):
        keep_dead_letters(broken, store)
    broken.close()  # RabbitMQ gives it back, delivery count one higher
    assert queue.ready[0].headers["x-delivery-count"] == 1
    # When a keeper takes it again
    again = FakeChannel(queue)
    assert keep_dead_letters(again, store) == 1
    # Then it was stored once, and this time it left the queue
    assert [letter.body for letter in store.listed(state=None)] == [b"x"]
    assert again.acked == [b"x"]
    assert not queue.ready


def test_with_the_ledger_away_the_keeper_takes_nothing(tmp_path: Path, clock: FakeClock) -> None:
    # Given a ledger that does not answer (a database without the table)
    down = DeadLetterStore(make_engine(f"sqlite:///{tmp_path / 'empty.db'}"), clock)
    queue = FakeQueue()
    queue.put(b"x", worker_dead_letter())
    channel = FakeChannel(queue)
    # When the keeper runs
    with pytest.raises(OperationalError):
        keep_dead_letters(channel, down)
    # Then it took nothing: the message waits in the queue, never delivered
    assert channel.gets == 0
    assert len(queue.ready) == 1


def test_a_message_the_ledger_failed_to_store_is_held_and_stored_next_round(
    store: DeadLetterStore,
) -> None:
    # Given a ledger that fails the first insert of a round
    queue = FakeQueue()
    queue.put(b"x", worker_dead_letter())
    queue.put(b"y", {"x-death": [{"reason": "rejected"}]})
    channel = FakeChannel(queue)
    flaky = LedgerGoesAway(store, failures=1)
    held: list[Any] = []
    with pytest.raises(OperationalError):
        keep_dead_letters(channel, flaky, held=held)
    # Then the message is held on the channel, neither acknowledged nor given back
    assert [message.body for message in held] == [b"x"]
    assert list(channel.unacked) == [1]
    assert [message.body for message in queue.ready] == [b"y"]
    # When the next round runs on the same channel
    assert keep_dead_letters(channel, flaky, held=held) == 2
    # Then the held one is stored first, then the rest, and nothing is left anywhere
    assert [letter.body for letter in store.listed()] == [b"x", b"y"]
    assert (held, channel.unacked, list(queue.ready)) == ([], {}, [])


def test_a_round_stops_at_its_limit(store: DeadLetterStore) -> None:
    queue = FakeQueue()
    for n in range(5):
        queue.put(f"m{n}".encode(), {"x-death": [{"reason": "rejected", "n": n}]})
    assert keep_dead_letters(FakeChannel(queue), store, limit=3) == 3
    assert len(queue.ready) == 2


# --- the store ------------------------------------------------------------------------------


def test_keeping_the_same_dead_letter_twice_writes_one_row(
    store: DeadLetterStore, clock: FakeClock
) -> None:
    assert store.keep(a_letter("k1", "r-1", clock)) is True
    assert store.keep(a_letter("k1", "r-1", clock)) is False
    assert len(store.listed(state=None)) == 1


def test_a_discard_is_audited_and_leaves_the_dead_letter_out_of_every_replay(
    store: DeadLetterStore, ledger: Ledger, clock: FakeClock
) -> None:
    # Given two pending dead letters of one request
    store.keep(a_letter("k1", "r-1", clock))
    store.keep(a_letter("k2", "r-1", clock))
    first = store.listed()[0]
    # When an operator discards the first
    assert store.discard(first.id, "alice", "duplicate of r-2") is True
    # Then it is discarded, with who, when and why, in the audit trail
    [gone] = store.listed(state="discarded")
    assert (gone.id, gone.resolved_by, gone.resolution) == (
        first.id,
        "operator:alice",
        "duplicate of r-2",
    )
    assert gone.resolved_at == clock()
    [entry] = ledger.history("dead_letter", str(first.id))
    assert (entry.action, entry.actor) == ("dead_letter_discarded", "operator:alice")
    assert entry.detail == {"reason": "duplicate of r-2", "request_id": "r-1"}
    # And no replay picks it, nor can it be resolved again
    assert [letter.id for letter in store.pending(request_ids=["r-1"])] == [first.id + 1]
    assert store.discard(first.id, "bob", "again") is False
    assert store.mark_replayed(first.id, "bob") is False


def test_a_replay_is_audited_once(store: DeadLetterStore, ledger: Ledger, clock: FakeClock) -> None:
    store.keep(a_letter("k1", None, clock))
    [letter] = store.pending()
    assert store.mark_replayed(letter.id, "alice") is True
    assert store.mark_replayed(letter.id, "alice") is False
    assert [e.action for e in ledger.history("dead_letter", str(letter.id))] == [
        "dead_letter_replayed"
    ]
    assert store.pending() == []


def test_pending_dead_letters_are_found_by_id_or_request_or_else_oldest_first(
    store: DeadLetterStore, clock: FakeClock
) -> None:
    for n in range(4):
        store.keep(a_letter(f"k{n}", f"r-{n}", clock))
    ids = [letter.id for letter in store.listed()]
    assert [letter.id for letter in store.pending(limit=2)] == ids[:2]
    found = store.pending(ids=[ids[3]], request_ids=["r-1"])
    assert [letter.id for letter in found] == [ids[1], ids[3]]
    assert [letter.request_id for letter in store.listed(request_id="r-2")] == ["r-2"]


def test_the_metrics_count_pending_dead_letters(
    store: DeadLetterStore, ledger: Ledger, clock: FakeClock
) -> None:
    # Given two dead letters kept and one of them discarded
    store.keep(a_letter("k1", "r-1", clock))
    store.keep(a_letter("k2", "r-2", clock))
    store.discard(store.listed()[0].id, "alice", "handled")
    # When the ledger's gauges are collected
    found = {f.name: f.samples[0].value for f in LedgerGauges(ledger.engine).collect()}
    # Then one is pending
    assert found["debit_worker_dead_letters_pending"] == 1


def test_times_come_back_in_utc(store: DeadLetterStore, clock: FakeClock) -> None:
    store.keep(a_letter("k1", None, clock))
    [letter] = store.listed()
    assert isinstance(letter.kept_at, datetime)
    assert letter.kept_at == clock()
    assert letter.dead_lettered_at.utcoffset() is not None


# --- the worker's step ----------------------------------------------------------------------


@pytest.fixture
def embedded() -> Iterator[Celery]:
    """A worker's Celery app on the embedded broker, its dead-letter queue emptied."""
    app = create_app(load_settings(broker_url=EMBEDDED_BROKER_URL))
    with app.connection_for_write() as connection:
        channel: Any = connection.default_channel
        dead_letter_queue(channel).declare()
        channel.queue_purge(dead_letter_queue.name)
        yield app


def a_step(
    app: Celery, ledger: Ledger, seen: Ledger | None = None
) -> tuple[DeadLetterKeeperStep, Runtime]:
    """The keeper step of a worker on `app` whose services use `ledger` (or `seen`)."""
    services = replace(a_world_on(ledger, FakeClock()).services(), ledger=seen or ledger)
    settings = load_settings(broker_url=EMBEDDED_BROKER_URL)
    runtime = Runtime(settings, app, factory=lambda _settings, _app: services)
    return DeadLetterKeeperStep(SimpleNamespace(app=app)), runtime


def test_the_workers_step_keeps_what_the_worker_dead_letters(
    embedded: Celery, ledger: Ledger, store: DeadLetterStore
) -> None:
    # Given a message the worker dead-lettered at its intake
    DeadLetters(embedded).send(b"\x00garbage", reason="body is not UTF-8", stage="intake")
    step, runtime = a_step(embedded, ledger)
    # When its keeper step runs a round
    step.run_round(runtime)
    step.stop(None)
    # Then the dead letter is in the ledger, under the id the worker gave it
    [letter] = store.listed()
    assert (letter.body, letter.stage, letter.reason) == (
        b"\x00garbage",
        "intake",
        "body is not UTF-8",
    )
    assert letter.dedupe_key == letter.headers["x-debit-worker-dead-letter-id"]


def test_with_the_ledger_away_the_step_says_so_once_and_leaves_the_queue_alone(
    embedded: Celery, ledger: Ledger, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Given a dead letter, and a worker whose ledger does not answer (no table)
    DeadLetters(embedded).send(b"x", reason="body is not JSON", stage="intake")
    away = Ledger.on(make_engine(f"sqlite:///{tmp_path / 'away.db'}"))
    step, runtime = a_step(embedded, ledger, seen=away)
    # When its keeper step runs two rounds
    step.run_round(runtime)
    step.run_round(runtime)
    step.stop(None)
    # Then one warning says the ledger does not answer, and the message is still queued
    warnings = [r for r in caplog.records if "the ledger does not answer" in r.getMessage()]
    assert len(warnings) == 1
    with embedded.connection_for_write() as connection:
        channel: Any = connection.default_channel
        assert channel.basic_get(dead_letter_queue.name, no_ack=True).body == b"x"
