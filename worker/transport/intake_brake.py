"""The intake's brake: while commands have to be given back, stop taking them for a while.

A command goes back to its queue when its first attempt could neither end nor schedule the
next (the broker or the ledger in trouble), and the quorum queue counts every return against
its delivery limit (20, then the command is dead-lettered): a few seconds of trouble would
dead-letter healthy commands. So the intake cancels its consumer and resumes after 1 s, then
2, 4 … up to 30 s while the trouble lasts; the first command settled normally resets it to 1 s.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable
from typing import Any, Final, Protocol

from worker.ops import metrics

log = logging.getLogger(__name__)

FIRST_PAUSE_SECONDS: Final = 1.0
LONGEST_PAUSE_SECONDS: Final = 30.0


class Consuming(Protocol):
    def cancel(self) -> None: ...
    def consume(self) -> None: ...


class IntakeBrake:
    def __init__(
        self,
        hub: Any,
        consumers: Callable[[], Iterable[Consuming]],
        *,
        errors: tuple[type[BaseException], ...],
    ) -> None:
        self._hub = hub
        self._consumers = consumers
        self._errors = errors
        self._next_pause = FIRST_PAUSE_SECONDS
        self.paused = False
        self._timer: Any = None

    def trouble(self) -> None:
        """A command was given back: stop taking commands, unless already stopped."""
        if self.paused:
            return
        self.paused = True
        metrics.intake_paused(True)
        pause, self._next_pause = self._next_pause, min(LONGEST_PAUSE_SECONDS, self._next_pause * 2)
        for consumer in self._consumers():
            self._quietly(consumer.cancel)
        log.warning("intake: commands being given back; taking no commands for %.0f s", pause)
        self._timer = self._hub.call_later(pause, self._resume)

    def healthy(self) -> None:
        """A command was settled normally: the next trouble starts from the shortest pause."""
        self._next_pause = FIRST_PAUSE_SECONDS

    def release(self) -> None:
        """The intake is stopping: forget a pending resume."""
        if self._timer is not None:
            self._hub.timer.cancel(self._timer)
            self._timer = None
            metrics.intake_paused(False)

    def _resume(self) -> None:
        self._timer = None
        self.paused = False
        metrics.intake_paused(False)
        for consumer in self._consumers():
            self._quietly(consumer.consume)
        log.info("intake: taking commands again")

    def _quietly(self, action: Callable[[], None]) -> None:
        # A channel that broke meanwhile is Celery's to restore (it restarts the intake).
        try:
            action()
        except self._errors as exc:
            log.warning("intake: %s failed: %r", getattr(action, "__name__", action), exc)
