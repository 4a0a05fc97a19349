"""The intake's hand-over: a command is acked only once the broker has confirmed its task,
and given back to its queue whenever that confirm cannot be had.

The broker side is a fake built for the purpose: a channel that numbers publishes as
RabbitMQ does in confirm mode, and a hub that records the reader and timer it is given.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from celery import Celery

from worker.handover import CONFIRM_TIMEOUT_SECONDS, ConfirmingHandover
from worker.tasks import PROCESS_TASK
from worker.topology import TASK_EXCHANGE, TASK_ROUTING_KEY


@dataclass
class FakeCommand:
    name: str
    settled: str | None = None

    def ack(self) -> None:
        assert self.settled is None, f"{self.name} settled twice"
        self.settled = "acked"

    def requeue(self) -> None:
        assert self.settled is None, f"{self.name} settled twice"
        self.settled = "requeued"


@dataclass
class FakeChannel:
    events: defaultdict[str, set[Callable[..., None]]] = field(
        default_factory=lambda: defaultdict(set)
    )
    in_confirm_mode: bool = False

    def confirm_select(self) -> None:
        self.in_confirm_mode = True

    def ack(self, tag: int, multiple: bool = False) -> None:
        for callback in self.events["basic_ack"]:
            callback(tag, multiple)

    def nack(self, tag: int) -> None:
        for callback in self.events["basic_nack"]:
            callback(tag, False)

    def give_back(self, task_id: str) -> None:
        message = type("Returned", (), {"properties": {"correlation_id": task_id}})()
        for callback in self.events["basic_return"]:
            callback(RuntimeError("NO_ROUTE"), "debits.tasks", "debit.process", message)


class FakeSocket:
    def fileno(self) -> int:
        return 42


@dataclass
class FakeConnection:
    default_channel: FakeChannel = field(default_factory=FakeChannel)
    closed: bool = False
    said_goodbye: bool = False
    broken: bool = False
    on_drain: Callable[[], None] | None = None

    @property
    def connection(self) -> Any:
        return type("Transport", (), {"sock": FakeSocket()})()

    def drain_events(self, timeout: float | None = None) -> None:
        if self.broken:
            raise ConnectionResetError("broker went away")
        if self.on_drain is not None:
            drain, self.on_drain = self.on_drain, None
            drain()
            return
        raise TimeoutError

    def close(self) -> None:  # the AMQP close handshake
        self.closed = True
        self.said_goodbye = True

    def collect(self) -> None:  # the socket dropped, no handshake
        self.closed = True


@dataclass
class FakeHub:
    readers: dict[int, Callable[[], None]] = field(default_factory=dict)
    repeating: list[Callable[[], None]] = field(default_factory=list)
    soon: list[Callable[[], None]] = field(default_factory=list)
    timer: Any = field(default_factory=type("Timer", (), {"cancel": lambda _s, _e: None}))

    def add_reader(self, fd: int, callback: Callable[[], None]) -> None:
        self.readers[fd] = callback

    def remove_reader(self, fd: int) -> None:
        self.readers.pop(fd, None)

    def call_soon(self, callback: Callable[[], None]) -> None:
        self.soon.append(callback)

    def call_repeatedly(self, _delay: float, callback: Callable[[], None]) -> object:
        self.repeating.append(callback)
        return callback


class RecordingHandover(ConfirmingHandover):
    """The real hand-over with the task publish recorded instead of sent."""

    def __init__(self, hub: FakeHub, clock: Callable[[], float], **kwargs: Any) -> None:
        self.connections: list[FakeConnection] = []
        self.sent: list[str] = []
        self.fail_next_send: Exception | None = None
        self.declared = 0
        self.signals: list[str] = []
        super().__init__(
            Celery(set_as_current=False),
            hub,
            connect=self._new,
            declare=self._count_declaration,
            clock=clock,
            on_trouble=lambda: self.signals.append("trouble"),
            on_healthy=lambda: self.signals.append("healthy"),
        )

    def _count_declaration(self, channel: Any) -> None:
        assert channel is self.channel
        self.declared += 1

    def _new(self) -> Any:
        self.connections.append(FakeConnection())
        return self.connections[-1]

    def _send(self, producer: Any, task_id: str, args: tuple[Any, ...]) -> None:
        if self.fail_next_send is not None:
            failure, self.fail_next_send = self.fail_next_send, None
            raise failure
        assert producer.channel.in_confirm_mode, "published outside confirm mode"
        self.sent.append(task_id)

    @property
    def channel(self) -> FakeChannel:
        return self.connections[-1].default_channel


@dataclass
class Clock:
    now: float = 1000.0
    tick: float = 0.0  # seconds that pass at every reading

    def __call__(self) -> float:
        self.now += self.tick
        return self.now


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def handover(hub: FakeHub, clock: Clock) -> RecordingHandover:
    handover = RecordingHandover(hub, clock)
    handover.start()
    return handover


def forward(handover: RecordingHandover, *names: str) -> list[FakeCommand]:
    commands = [FakeCommand(name) for name in names]
    for command in commands:
        handover.forward(command, f"task-{command.name}", ("{}", {}))  # type: ignore[arg-type]
    return commands


def test_a_command_is_acked_only_when_the_broker_confirms_its_task(
    handover: RecordingHandover,
) -> None:
    # Given two commands handed over
    first, second = forward(handover, "a", "b")
    assert handover.sent == ["task-a", "task-b"]
    assert (first.settled, second.settled) == (None, None)
    # When the broker confirms the first task only
    handover.channel.ack(1)
    # Then only the first command is acked; the second still waits
    assert (first.settled, second.settled) == ("acked", None)
    assert handover.in_flight == 1


def test_a_multiple_confirm_acks_every_command_up_to_its_tag(
    handover: RecordingHandover,
) -> None:
    # Given three commands handed over
    commands = forward(handover, "a", "b", "c")
    # When the broker confirms up to the second in one go
    handover.channel.ack(2, multiple=True)
    # Then the first two are acked and the third waits
    assert [c.settled for c in commands] == ["acked", "acked", None]


def test_a_refused_task_puts_its_command_back_on_the_queue(
    handover: RecordingHandover,
) -> None:
    # Given a command handed over
    (command,) = forward(handover, "a")
    # When the broker nacks its task
    handover.channel.nack(1)
    # Then the command is requeued, not acked
    assert command.settled == "requeued"


def test_an_unroutable_task_puts_its_command_back_even_though_the_broker_confirms_it(
    handover: RecordingHandover,
) -> None:
    # Given a command handed over
    (command,) = forward(handover, "a")
    # When its task comes back unroutable (mandatory), then is confirmed as RabbitMQ does
    handover.channel.give_back("task-a")
    handover.channel.ack(1)
    # Then the command is requeued: a confirmed but unrouted task is a lost task
    assert command.settled == "requeued"


def test_after_an_unroutable_task_the_topology_is_declared_again_before_the_next_hand_over(
    handover: RecordingHandover,
) -> None:
    # Given a task that came back unroutable (its queue deleted or unbound by hand)
    forward(handover, "a")
    handover.channel.give_back("task-a")
    handover.channel.ack(1)
    assert handover.declared == 0
    # When the next command (here, the same one redelivered) is handed over
    forward(handover, "a-again", "b")
    # Then the queues and bindings are declared once more, before it is published
    assert handover.declared == 1
    assert handover.sent == ["task-a", "task-a-again", "task-b"]


def test_a_lost_connection_requeues_every_unconfirmed_command_and_the_next_starts_afresh(
    handover: RecordingHandover, hub: FakeHub
) -> None:
    # Given two unconfirmed hand-overs
    commands = forward(handover, "a", "b")
    # When the hand-over connection breaks under the event loop
    handover.connections[0].broken = True
    hub.readers[42]()
    # Then both commands go back to the queue and the connection is dropped
    assert [c.settled for c in commands] == ["requeued", "requeued"]
    assert handover.connections[0].closed
    assert not handover.connections[0].said_goodbye, "no close handshake with a failed broker"
    assert 42 not in hub.readers
    # And the next command opens a new connection whose confirms count from 1 again
    (later,) = forward(handover, "c")
    assert len(handover.connections) == 2
    handover.channel.ack(1)
    assert later.settled == "acked"


def test_a_confirm_that_never_comes_gives_the_commands_back_after_the_timeout(
    handover: RecordingHandover, hub: FakeHub, clock: Clock
) -> None:
    # Given a command handed over and its confirm overdue
    (command,) = forward(handover, "a")
    clock.now += CONFIRM_TIMEOUT_SECONDS - 1
    hub.repeating[0]()
    assert command.settled is None
    # When the periodic check runs past the timeout
    clock.now += 2
    hub.repeating[0]()
    # Then the command is requeued
    assert command.settled == "requeued"


def test_a_publish_that_fails_requeues_the_command_at_once(handover: RecordingHandover) -> None:
    # Given a broker that refuses the publish itself
    handover.fail_next_send = ConnectionResetError("socket closed")
    # When a command is handed over
    (command,) = forward(handover, "a")
    # Then it is requeued and nothing waits for a confirm
    assert command.settled == "requeued"
    assert handover.in_flight == 0


def test_closing_waits_for_outstanding_confirms_and_gives_back_the_rest(
    handover: RecordingHandover, clock: Clock
) -> None:
    # Given two commands in flight, of which the broker confirms the first while closing
    first, second = forward(handover, "a", "b")
    clock.tick = 0.1
    handover.connections[0].on_drain = lambda: handover.channel.ack(1)
    # When the worker stops
    handover.close(grace_seconds=0.5)
    # Then the confirmed one is acked and the other requeued, never left unsettled
    assert (first.settled, second.settled) == ("acked", "requeued")
    assert handover.connections[0].closed


def test_closing_with_every_confirm_in_says_goodbye_to_the_broker(
    handover: RecordingHandover, clock: Clock
) -> None:
    # Given one command handed over and confirmed
    (command,) = forward(handover, "a")
    handover.channel.ack(1)
    # When the worker stops
    clock.tick = 0.1
    handover.close(grace_seconds=0.5)
    # Then the connection is closed properly (nothing is outstanding to give back)
    assert command.settled == "acked"
    assert handover.connections[0].said_goodbye


def test_a_full_read_burst_asks_the_loop_to_come_back_for_the_rest(
    handover: RecordingHandover, hub: FakeHub
) -> None:
    # Given a connection with more frames ready than one wake-up reads
    forward(handover, "a")
    connection = handover.connections[0]
    connection.drain_events = lambda timeout=None: None  # type: ignore[method-assign]
    # When the loop wakes the hand-over
    hub.readers[42]()
    # Then it schedules itself again instead of waiting for the socket (TLS buffers data)
    assert hub.soon


def test_the_intake_hears_of_trouble_whenever_commands_are_given_back(
    handover: RecordingHandover, hub: FakeHub
) -> None:
    # Given hand-overs confirmed, refused, returned, failed to publish, and a lost connection
    forward(handover, "a", "b", "c")
    handover.channel.ack(1)
    assert handover.signals == ["healthy"]
    handover.channel.nack(2)
    handover.channel.give_back("task-c")
    handover.channel.ack(3)
    handover.fail_next_send = ConnectionResetError("gone")
    forward(handover, "d")
    forward(handover, "e")
    handover.connections[-1].broken = True
    hub.readers[42]()
    # Then each giving back was reported as trouble (the intake pauses on it)
    assert handover.signals == ["healthy", "trouble", "trouble", "trouble", "trouble"]


def test_stopping_is_not_reported_as_trouble(handover: RecordingHandover, clock: Clock) -> None:
    # Given a command still unconfirmed when the worker stops
    forward(handover, "a")
    clock.tick = 0.1
    # When the hand-over closes and gives it back
    handover.close(grace_seconds=0.3)
    # Then the intake is not told to pause (it is stopping anyway)
    assert handover.signals == []


@dataclass
class RecordingProducer:
    published: list[dict[str, Any]] = field(default_factory=list)

    def publish(self, body: Any, **options: Any) -> None:
        self.published.append({"body": body, **options})


def test_the_task_message_is_celerys_own_with_the_command_only_in_its_body(
    hub: FakeHub, clock: Clock
) -> None:
    # Given the real hand-over and a producer that records what it is asked to publish
    handover = ConfirmingHandover(Celery(set_as_current=False), hub, clock=clock)
    producer = RecordingProducer()
    command = '{"request_id": "req-1", "account": "acct_1Debtor", "amount": 500}'
    carried = {"x-debit-producer": "billing"}
    # When a command's task is sent
    handover._send(producer, "req-1:abc", (command, carried))  # type: ignore[arg-type]
    # Then it is a Celery protocol-2 message for the task, sent persistent and mandatory to
    # the task exchange, without retries inside the publish (a failure requeues the command)
    [sent] = producer.published
    assert sent["exchange"] == TASK_EXCHANGE
    assert sent["routing_key"] == TASK_ROUTING_KEY
    assert (sent["mandatory"], sent["retry"], sent["delivery_mode"]) == (True, False, 2)
    assert sent["serializer"] == "json"
    assert sent["correlation_id"] == "req-1:abc"
    headers = sent["headers"]
    assert (headers["task"], headers["id"], headers["retries"]) == (PROCESS_TASK, "req-1:abc", 0)
    args, kwargs, _embed = sent["body"]
    assert (tuple(args), kwargs) == ((command, carried), {})
    # And the command travels once: the headers name the task, not the account or amount
    assert "acct_1Debtor" not in str(headers)
    assert headers["argsrepr"] == "(command of task req-1:abc)"
