"""The worker process's own metrics and health endpoint (worker/ops/health.py), on
DEBIT_WORKER_METRICS_PORT. With `run --processes N` the supervisor serves it instead, and the
worker processes it starts are given port 0."""

from __future__ import annotations

import functools
from typing import Any

from celery import bootsteps

from worker.bootstrap import runtime_of
from worker.ops.health import ProbeServer
from worker.ops.probe_endpoints import in_process


class ProbeStep(bootsteps.StartStopStep):
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app
        self._server: ProbeServer | None = None

    def start(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        settings = runtime_of(self._app).settings
        self._server = ProbeServer.listen(
            settings.metrics_host, settings.metrics_port, functools.partial(in_process, settings)
        )
        if self._server is not None:
            self._server.serve_in_background()

    def stop(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        if self._server is not None:
            self._server.close()
            self._server = None

    terminate = stop
    shutdown = stop
