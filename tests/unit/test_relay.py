"""The outbox relay: publishes what the inline publish could not, oldest first, once."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from worker.adapters.ledger import Ledger
from worker.domain.ports import PublishFailed
from worker.domain.types import OutboxEvent
from worker.transport.relay import GRACE_SECONDS, relay_once

from .fakes import FakeClock, FakePublisher, migrated_ledger


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def an_event(n: int) -> OutboxEvent:
    return OutboxEvent(
        event_id=f"evt-{n}",
        request_id=f"req-{n}",
        event_type="io.debit-worker.debit.succeeded.v1",
        routing_key="debit.succeeded",
        body="{}",
    )


def unsent_events(ledger: Ledger, clock: FakeClock, count: int) -> None:
    for n in range(count):
        ledger.outbox.add(an_event(n))
        clock.advance(1)
    clock.advance(GRACE_SECONDS)


@dataclass
class FlakyPublisher:
    """Confirms the first `confirm` events, then the broker goes away."""

    confirm: int
    published: list[OutboxEvent] = field(default_factory=list)

    def publish(self, event: OutboxEvent) -> None:
        if len(self.published) >= self.confirm:
            raise PublishFailed("connection lost")
        self.published.append(event)


def test_the_relay_publishes_unsent_events_oldest_first_and_marks_them_sent(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given three events left unsent
    unsent_events(ledger, clock, 3)
    publisher = FakePublisher()

    # When the relay runs
    sent = relay_once(ledger, publisher)

    # Then they are published in order and none is left
    assert sent == 3
    assert publisher.ids == ["evt-0", "evt-1", "evt-2"]
    assert ledger.outbox.count_unsent() == 0


def test_a_second_round_publishes_nothing_again(ledger: Ledger, clock: FakeClock) -> None:
    # Given a round that published everything
    unsent_events(ledger, clock, 2)
    publisher = FakePublisher()
    relay_once(ledger, publisher)

    # When the relay runs again
    sent = relay_once(ledger, publisher)

    # Then nothing is sent twice
    assert sent == 0
    assert len(publisher.published) == 2


def test_the_relay_stops_when_the_broker_fails_and_resumes_where_it_stopped(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given four unsent events and a broker that fails after two
    unsent_events(ledger, clock, 4)
    flaky = FlakyPublisher(confirm=2)

    # When the relay runs, and later runs again with the broker back
    first = relay_once(ledger, flaky)
    healthy = FakePublisher()
    second = relay_once(ledger, healthy)

    # Then the first two went in the first round, the rest in the second, each once
    assert (first, second) == (2, 2)
    assert [e.event_id for e in flaky.published] == ["evt-0", "evt-1"]
    assert healthy.ids == ["evt-2", "evt-3"]
    assert ledger.outbox.count_unsent() == 0


def test_the_relay_sends_at_most_limit_events_a_round(ledger: Ledger, clock: FakeClock) -> None:
    # Given five unsent events
    unsent_events(ledger, clock, 5)
    publisher = FakePublisher()

    # When a round is limited to two
    sent = relay_once(ledger, publisher, limit=2)

    # Then two go, the oldest
    assert sent == 2
    assert publisher.ids == ["evt-0", "evt-1"]
    assert ledger.outbox.count_unsent() == 3


def test_the_relay_leaves_events_younger_than_the_grace_period(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given an old event and one written just now
    ledger.outbox.add(an_event(0))
    clock.advance(GRACE_SECONDS + 1)
    ledger.outbox.add(an_event(1))
    publisher = FakePublisher()

    # When the relay runs
    sent = relay_once(ledger, publisher)

    # Then only the old one is published
    assert sent == 1
    assert publisher.ids == ["evt-0"]
