"""The intake's brake: while hand-overs fail, commands wait in their queue instead of
spending their deliveries (a quorum queue dead-letters a command after 20)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from worker.transport.intake_brake import LONGEST_PAUSE_SECONDS, IntakeBrake


@dataclass
class FakeConsumer:
    consuming: bool = True
    fail: bool = False

    def cancel(self) -> None:
        if self.fail:
            raise ConnectionResetError("channel gone")
        self.consuming = False

    def consume(self) -> None:
        if self.fail:
            raise ConnectionResetError("channel gone")
        self.consuming = True


@dataclass
class FakeHub:
    later: list[tuple[float, Callable[[], None]]] = field(default_factory=list)
    cancelled: list[Any] = field(default_factory=list)

    def call_later(self, delay: float, callback: Callable[[], None]) -> object:
        entry = (delay, callback)
        self.later.append(entry)
        return entry

    @property
    def timer(self) -> Any:
        hub = self
        return type("Timer", (), {"cancel": lambda _s, entry: hub.cancelled.append(entry)})()

    def run_next(self) -> float:
        delay, callback = self.later.pop(0)
        callback()
        return delay


@pytest.fixture
def consumer() -> FakeConsumer:
    return FakeConsumer()


@pytest.fixture
def hub() -> FakeHub:
    return FakeHub()


@pytest.fixture
def brake(hub: FakeHub, consumer: FakeConsumer) -> IntakeBrake:
    return IntakeBrake(hub, lambda: [consumer], errors=(OSError,))


def test_trouble_stops_taking_commands_and_resumes_a_second_later(
    brake: IntakeBrake, hub: FakeHub, consumer: FakeConsumer
) -> None:
    # When a hand-over fails
    brake.trouble()
    # Then the intake stops consuming, and comes back after 1 s
    paused_then = (consumer.consuming, brake.paused)
    assert paused_then == (False, True)
    assert hub.run_next() == 1.0
    assert (consumer.consuming, brake.paused) == (True, False)


def test_trouble_while_paused_does_not_pause_again(brake: IntakeBrake, hub: FakeHub) -> None:
    brake.trouble()
    brake.trouble()
    assert len(hub.later) == 1


def test_lasting_trouble_pauses_longer_each_time_up_to_a_limit(
    brake: IntakeBrake, hub: FakeHub
) -> None:
    # Given hand-overs that keep failing right after each resume
    pauses = []
    for _ in range(8):
        brake.trouble()
        pauses.append(hub.run_next())
    # Then the pauses double, and stop growing at the limit
    assert pauses == [1.0, 2.0, 4.0, 8.0, 16.0, LONGEST_PAUSE_SECONDS, 30.0, 30.0]


def test_a_confirmed_hand_over_brings_the_pause_back_to_one_second(
    brake: IntakeBrake, hub: FakeHub
) -> None:
    for _ in range(3):
        brake.trouble()
        hub.run_next()
    # When a hand-over succeeds after the trouble
    brake.healthy()
    brake.trouble()
    # Then the next pause is the shortest again
    assert hub.run_next() == 1.0


def test_a_broken_channel_does_not_break_the_brake(hub: FakeHub) -> None:
    # Given a consumer whose channel is gone (Celery restores it by restarting the intake)
    broken = FakeConsumer(fail=True)
    brake = IntakeBrake(hub, lambda: [broken], errors=(OSError,))
    # When trouble comes and the pause ends, nothing raises
    brake.trouble()
    hub.run_next()
    assert not brake.paused


def test_a_stopping_intake_forgets_its_pending_resume(brake: IntakeBrake, hub: FakeHub) -> None:
    brake.trouble()
    brake.release()
    assert hub.cancelled == [hub.later[0]]
