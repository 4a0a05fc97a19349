"""A worker bootstep that runs one job periodically in its own thread (the outbox relay,
the janitor), ending with the worker however it shuts down."""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from worker.bootstrap import Runtime, runtime_of

log = logging.getLogger(__name__)


class PeriodicStep(bootsteps.StartStopStep):
    thread_name = "periodic"
    # False: the first round waits one interval (the relay, the reconciler); True: it runs as
    # the thread starts (the janitor and the lease keeper, whose delay is a recovery's).
    first_round_at_start = False

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def interval(self, runtime: Runtime) -> float:
        raise NotImplementedError

    def run_round(self, runtime: Runtime) -> None:
        raise NotImplementedError

    def start(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._thread = threading.Thread(target=self._loop, name=self.thread_name, daemon=True)
        self._thread.start()

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    # A cold shutdown calls terminate, not stop: the thread must end either way.
    terminate = stop
    shutdown = stop

    def _loop(self) -> None:
        runtime = runtime_of(self._app)
        interval = self.interval(runtime)
        if self.first_round_at_start:
            self._round(runtime, interval)
        while not self._stop.wait(interval):
            self._round(runtime, interval)

    def _round(self, runtime: Runtime, interval: float) -> None:
        try:
            self.run_round(runtime)
        except Exception:  # one bad round (e.g. a database restart) must not end the job
            log.exception("%s round failed; trying again in %.0f s", self.thread_name, interval)
