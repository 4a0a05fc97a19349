"""The worker's HTTP endpoint: `/metrics` (Prometheus), `/livez` and `/readyz`.

One small HTTP server per host's worker: in the worker process itself (`run`), or in the
supervisor of `run --processes N`, which serves every process's metrics summed and judges
readiness from what each process reports. `/livez` answers as long as the serving process
does, and costs nothing. `/readyz` is ready when every worker process consumes commands
(intake not paused), Stripe accepted the key at start, and the ledger answers a `SELECT 1`
(cached for two seconds, so probes every few seconds cost the database little); otherwise
503, and the JSON body names what is not ready.

This module imports the standard library only: the supervisor binds the port at once and
loads what `/metrics` and `/readyz` need (worker/ops/probe_endpoints.py) on their first call.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from typing import Final, Generic, Protocol, TypeVar

log = logging.getLogger(__name__)

JSON: Final = "application/json"
# A client that sends its request this slowly is dropped: in the supervisor, serving
# happens between checks on the worker processes.
REQUEST_TIMEOUT_SECONDS: Final = 2.0
LEDGER_CACHE_SECONDS: Final = 2.0

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class ProcessState:
    """What one worker process reports about itself (worker/ops/metrics.py STATE_GAUGES)."""

    consuming: bool = False
    paused: bool = False
    stripe_key_accepted: bool = False


@dataclass(frozen=True, slots=True)
class Check:
    ok: bool
    detail: str


@dataclass(frozen=True, slots=True)
class Report:
    checks: Mapping[str, Check]

    @property
    def ready(self) -> bool:
        return all(check.ok for check in self.checks.values())

    def body(self) -> bytes:
        return json.dumps(
            {
                "ready": self.ready,
                "not_ready": [name for name, check in self.checks.items() if not check.ok],
                "checks": {
                    name: {"ok": check.ok, "detail": check.detail}
                    for name, check in self.checks.items()
                },
            }
        ).encode()


def judge(
    states: Mapping[str, ProcessState], live: Sequence[str], expected: int, ledger: Check
) -> Report:
    """Readiness of a host's worker: `expected` processes, `live` the pids running now,
    `states` what each pid reported (a process that reported nothing yet is starting)."""
    running = [states.get(pid, ProcessState()) for pid in live]
    consuming = sum(state.consuming and not state.paused for state in running)
    paused = sum(state.paused for state in running)
    keyed = sum(state.stripe_key_accepted for state in running)
    missing = max(0, expected - len(running))
    broker = f"{consuming} of {expected} worker processes consuming commands"
    if paused:
        broker += f"; {paused} paused (commands being given back: broker or ledger trouble)"
    if missing:
        broker += f"; {missing} not running (being restarted)"
    stripe = (
        f"Stripe accepted the key in {keyed} of {expected} worker processes"
        if keyed == expected
        else f"Stripe has not accepted the key in {expected - keyed} of {expected} worker "
        "processes: the platform read at start has not succeeded yet, or Stripe refused "
        "the key (see the log)"
    )
    return Report(
        {
            "broker": Check(consuming == expected, broker),
            "ledger": ledger,
            "stripe_key": Check(keyed == expected, stripe),
        }
    )


class Cached(Generic[T]):
    """The last answer of `compute`, asked again once it is `seconds` old."""

    def __init__(
        self, compute: Callable[[], T], seconds: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._compute = compute
        self._seconds = seconds
        self._clock = clock
        self._answer: tuple[float, T] | None = None

    def get(self) -> T:
        now = self._clock()
        if self._answer is None or now - self._answer[0] >= self._seconds:
            self._answer = (now, self._compute())
        return self._answer[1]


class Endpoints(Protocol):
    def metrics(self) -> tuple[bytes, str]:
        """The exposition and its content type."""

    def readiness(self) -> Report: ...


class _Lazy:
    """The endpoints, built on their first use (the imports cost a second of CPU)."""

    def __init__(self, build: Callable[[], Endpoints]) -> None:
        self._build = build
        self._built: Endpoints | None = None
        self._lock = threading.Lock()

    def get(self) -> Endpoints:
        with self._lock:
            if self._built is None:
                self._built = self._build()
            return self._built


class _Server(HTTPServer):
    endpoints: _Lazy


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    timeout = REQUEST_TIMEOUT_SECONDS
    protocol_version = "HTTP/1.0"

    def do_GET(self) -> None:
        path = self.path.partition("?")[0]
        try:
            if path == "/livez":
                self._send(HTTPStatus.OK, JSON, b'{"live": true}')
            elif path == "/readyz":
                report = self.server.endpoints.get().readiness()
                status = HTTPStatus.OK if report.ready else HTTPStatus.SERVICE_UNAVAILABLE
                self._send(status, JSON, report.body())
            elif path == "/metrics":
                body, content_type = self.server.endpoints.get().metrics()
                self._send(HTTPStatus.OK, content_type, body)
            else:
                self._send(
                    HTTPStatus.NOT_FOUND, JSON, b'{"paths": ["/livez", "/readyz", "/metrics"]}'
                )
        except Exception:  # a bug here must not end the server; the log has it
            log.exception("health endpoint: %s failed", path)
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, JSON, b'{"error": "see the log"}')

    def _send(self, status: HTTPStatus, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        log.debug("health endpoint: " + format, *args)


class ProbeServer:
    """The HTTP server; `listen` binds it, then it serves in a thread of its own (a worker
    process) or between the supervisor's checks (`serve_for`: the supervisor has no threads,
    which its children's start relies on)."""

    def __init__(self, server: _Server) -> None:
        self._server = server
        self._thread: threading.Thread | None = None

    @classmethod
    def listen(cls, host: str, port: int, endpoints: Callable[[], Endpoints]) -> ProbeServer | None:
        """None (logged) when the port cannot be had: the worker runs on without it."""
        server_class = _Server6 if ":" in host else _Server
        try:
            server = server_class((host, port), _Handler)
        except OSError as exc:
            _not_served(host, port, exc)
            return None
        server.endpoints = _Lazy(endpoints)
        log.info(
            "metrics and health endpoint on http://%s:%d (/metrics /livez /readyz)", host, port
        )
        return cls(server)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def serve_in_background(self) -> None:
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="health-endpoint", daemon=True
        )
        self._thread.start()

    def serve_for(self, seconds: float) -> None:
        """Answer requests for `seconds`, then return."""
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            self._server.timeout = left
            self._server.handle_request()

    def close(self) -> None:
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._server.server_close()


def _not_served(host: str, port: int, exc: OSError) -> None:
    # One line, no traceback: the cause is the port, not this code.
    log.error(
        "metrics and health endpoint not served: cannot listen on %s:%d (%s); set "
        "DEBIT_WORKER_METRICS_PORT to a free port, or 0 for none",
        host,
        port,
        exc,
    )


# --- run --processes N: the supervisor's side ------------------------------------------------


@contextmanager
def metrics_directory(given: str | None) -> Iterator[str]:
    """The PROMETHEUS_MULTIPROC_DIR of the worker processes: `given`, emptied of an earlier
    run's files (which would count again), else a new temporary directory, removed after."""
    if given:
        os.makedirs(given, exist_ok=True)
        for stale in glob.glob(os.path.join(given, "*.db")):
            os.remove(stale)
        yield given
        return
    created = tempfile.mkdtemp(prefix="debit-worker-metrics-")
    try:
        yield created
    finally:
        shutil.rmtree(created, ignore_errors=True)


def forget_process(directory: str, pid: int) -> None:
    """A worker process ended: its `live*` gauges (in flight, consuming …) no longer count;
    its counters do (they only ever add up)."""
    from prometheus_client.multiprocess import mark_process_dead  # noqa: PLC0415 - on demand

    mark_process_dead(pid, directory)  # type: ignore[no-untyped-call]
