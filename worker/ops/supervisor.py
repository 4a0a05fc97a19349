"""`debit-worker run --processes N`: several worker processes on one host, kept running.

One worker process uses about one core (one interpreter lock); N processes, each with its own
threads, connections and ledger pool, use N. The process `run` started becomes their
supervisor: it restarts one that dies (as Celery's prefork pool would), and passes
SIGTERM/SIGINT on so that each finishes its tasks. The Stripe rate budget stays the host's:
shared through Redis when DEBIT_WORKER_RATE_BUDGET_REDIS_URL is set, otherwise split evenly
between the processes.

Each worker process is a fork of the supervisor, which first imports the worker's code once
(`prepare`): a process then starts in a few tenths of a second instead of importing for a
second and more of CPU of its own, and so does one restarted after a crash. The first forks
come before the supervisor opens any connection or thread. A restart forks a supervisor that
serves the endpoint: the child closes its copy of the listening socket and never touches the
probe's ledger connection (psycopg leaves a connection alone in a process that did not
open it).

With DEBIT_WORKER_METRICS_PORT the supervisor also serves the metrics and health endpoint
(worker/ops/health.py) for all of them: the worker processes record their metrics in files of
a shared directory (PROMETHEUS_MULTIPROC_DIR), which it serves summed; it loads the ledger
code that needs on the endpoint's first call.
"""

from __future__ import annotations

import atexit
import ctypes
import gc
import glob
import json
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import Callable
from contextlib import ExitStack, suppress
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Final, NoReturn, Protocol

if TYPE_CHECKING:
    from worker.ops.health import ProbeServer
    from worker.settings import Settings

log = logging.getLogger(__name__)

# A process that dies sooner than this after its start counts as a crash loop.
QUICK_DEATH_SECONDS: Final = 30.0
MAX_QUICK_DEATHS: Final = 5
RESTART_DELAY_MAX_SECONDS: Final = 30.0
# The supervisor's own lines stay text whatever DEBIT_WORKER_LOG_FORMAT says.
LOG_FORMAT: Final = "%(asctime)s %(levelname)s %(name)s: %(message)s"

_STOP_SIGNALS: Final = frozenset({signal.SIGTERM, signal.SIGINT})


def child_environment(settings: Settings, processes: int) -> dict[str, str]:
    """The environment of each child: this one, with the host's budget divided."""
    env = dict(os.environ)
    env["DEBIT_WORKER_CONCURRENCY"] = str(settings.concurrency)
    env["DEBIT_WORKER_LOG_LEVEL"] = settings.log_level
    # The supervisor serves the endpoint; `supervise` gives the processes port 0.
    env["DEBIT_WORKER_METRICS_PORT"] = str(settings.metrics_port)
    env["DEBIT_WORKER_METRICS_HOST"] = settings.metrics_host
    if settings.rate_budget_redis_url is None:
        # Each process keeps its own budget: together they must not exceed the host's limits.
        env["DEBIT_WORKER_STRIPE_RATE_LIMIT"] = repr(settings.effective_stripe_rate / processes)
        env["DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS"] = json.dumps(
            {name: rate / processes for name, rate in settings.effective_endpoint_limits.items()}
        )
    elif settings.rate_budget_processes == 1:
        # While Redis is unreachable, each process falls back to its share of the rate.
        env["DEBIT_WORKER_RATE_BUDGET_PROCESSES"] = str(processes)
    return env


def supervise(
    settings: Settings,
    processes: int,
    *,
    prepare: Callable[[], None],
    work: Callable[[], object],
) -> int:
    """Be the supervisor of `processes` worker processes, each running `work` in a fork of
    this one, until stopped (0) or a process keeps dying at start-up (1). `prepare` imports
    what `work` needs, once, before the first fork."""
    logging.basicConfig(level=settings.log_level, format=LOG_FORMAT)
    env = child_environment(settings, processes)
    with ExitStack() as stack:
        directory = _metrics_directory(stack, env) if settings.metrics_port else None
        # This process runs with its children's environment, which they inherit: what a module
        # reads as it is imported (prometheus-client its multiprocess directory) is the same
        # in both.
        os.environ.clear()
        os.environ.update(env)
        prepare()
        if directory is not None:
            _forget_own_metric_files(directory)
        gc.freeze()  # what is loaded now stays shared with the children (copy-on-write)
        fork = Forker(work)
        supervisor = Supervisor(fork, processes)
        if directory is not None:
            supervisor.on_exit = _forget_in(directory)
            supervisor.after_start = lambda: _serve(settings, directory, supervisor, fork, stack)
        return supervisor.run()


def _metrics_directory(stack: ExitStack, env: dict[str, str]) -> str:
    """The processes' shared metrics directory (removed at exit unless given)."""
    from worker.ops.health import metrics_directory  # noqa: PLC0415 - only when serving

    directory = stack.enter_context(metrics_directory(env.get("PROMETHEUS_MULTIPROC_DIR")))
    env.update(PROMETHEUS_MULTIPROC_DIR=directory, DEBIT_WORKER_METRICS_PORT="0")
    return directory


def _forget_own_metric_files(directory: str) -> None:
    """Importing the metrics made this process's (empty) files; it records nothing."""
    for path in glob.glob(os.path.join(glob.escape(directory), f"*_{os.getpid()}.db")):
        os.remove(path)


def _forget_in(directory: str) -> Callable[[int], None]:
    from worker.ops.health import forget_process  # noqa: PLC0415 - only when serving

    return lambda pid: forget_process(directory, pid)


def _serve(
    settings: Settings, directory: str, supervisor: Supervisor, fork: Forker, stack: ExitStack
) -> None:
    """Serve the endpoint between checks on the processes (once they have been forked)."""
    from worker.ops.health import Endpoints, ProbeServer  # noqa: PLC0415 - only when serving

    def endpoints() -> Endpoints:
        from worker.ops.probe_endpoints import for_supervisor  # noqa: PLC0415 - on first use

        return for_supervisor(directory, supervisor.live_pids, supervisor.processes)

    server = ProbeServer.listen(settings.metrics_host, settings.metrics_port, endpoints)
    if server is None:
        return
    stack.callback(server.close)
    fork.servers.append(server)
    supervisor.idle = server.serve_for


class Child(Protocol):
    """A worker process, as the supervisor watches it (a Popen has the same methods)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self) -> int: ...

    def send_signal(self, sig: int) -> None: ...

    def kill(self) -> None: ...


class Forked:
    """A child forked from this process: its exit code as Popen gives one (-N: signal N)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self) -> int:
        if self.returncode is None:
            _, status = os.waitpid(self.pid, 0)
            self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:  # never a signal to a pid reaped, maybe reused since
            os.kill(self.pid, sig)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


@dataclass
class Forker:
    """Starts a child that runs `body` in a fork of this process, then exits as a new
    interpreter would after it: the exit code of its SystemExit, 1 and the traceback after
    any other exception, non-daemon threads joined and atexit handlers run first."""

    body: Callable[[], object]
    # The endpoint's listening socket: open here, closed in each child.
    servers: list[ProbeServer] = field(default_factory=list)

    def __call__(self) -> Forked:
        sys.stdout.flush()  # else the child writes this process's buffered output again
        sys.stderr.flush()
        parent = os.getpid()
        # Blocked across the fork: a stop signal reaches the child only once it has its own
        # handlers, never this supervisor's (which would signal the child's siblings).
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, _STOP_SIGNALS)
        try:
            pid = os.fork()
            if pid == 0:
                self._be_child(parent, blocked)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        with suppress(ProcessLookupError, PermissionError):
            os.setpgid(pid, pid)  # the child does too: whoever comes first, no race
        return Forked(pid)

    def _be_child(self, parent: int, mask: set[int]) -> NoReturn:
        code = 1
        try:
            code = _run_to_exit_code(lambda: self._child_main(parent, mask))
        finally:
            os._exit(code)  # never back into the supervisor's frames

    def _child_main(self, parent: int, mask: set[int]) -> object:
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once (a second SIGINT makes Celery stop without finishing its tasks).
        os.setpgid(0, 0)
        _stop_with(parent)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)  # as in a new interpreter
        signal.signal(signal.SIGINT, signal.default_int_handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for server in self.servers:
            server.close()
        _fresh_logging()
        return self.body()


def _run_to_exit_code(body: Callable[[], object]) -> int:
    interrupted = False
    try:
        body()
        code = 0
    except SystemExit as stop:
        code = _exit_code(stop)
    except BaseException as exc:  # noqa: BLE001 - as the interpreter does: report, exit 1
        sys.excepthook(type(exc), exc, exc.__traceback__)
        code, interrupted = 1, isinstance(exc, KeyboardInterrupt)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    sys.stdout.flush()
    sys.stderr.flush()
    if interrupted:  # an interpreter ends by the signal itself (the supervisor: a clean stop)
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _exit_code(stop: SystemExit) -> int:
    if stop.code is None:
        return 0
    if isinstance(stop.code, int):
        return stop.code
    print(stop.code, file=sys.stderr)
    return 1


def _fresh_logging() -> None:
    """Logging as a new interpreter has it: the worker process configures its own."""
    root = logging.getLogger()
    for handler in root.handlers[:]:
        root.removeHandler(handler)
    root.setLevel(logging.WARNING)


@dataclass
class _Slot:
    number: int
    process: Child | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def restart_delay(quick_deaths: int) -> float:
    """0 s after a process that ran a while, then 1, 3, 7 … up to 30 s while it keeps dying."""
    return min(RESTART_DELAY_MAX_SECONDS, 2.0**quick_deaths - 1)


@dataclass
class Supervisor:
    start: Callable[[], Child]  # one new worker process
    processes: int
    clock: Callable[[], float] = time.monotonic
    poll_seconds: float = 0.5
    delay: Callable[[int], float] = restart_delay
    # Between two checks on the processes (the endpoint serves requests meanwhile).
    idle: Callable[[float], None] = time.sleep
    # A process ended (its pid), before it is restarted.
    on_exit: Callable[[int], None] = lambda _pid: None
    # Once the first processes are started (and forked: nothing of this is in them).
    after_start: Callable[[], None] = lambda: None
    slots: list[_Slot] = field(init=False)
    stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.slots = [_Slot(number) for number in range(1, self.processes + 1)]

    def run(self) -> int:
        """Until a signal asks to stop (0) or a process keeps dying at start-up (1)."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        try:
            self.start_all()
            self.after_start()
            while not self.stopping:
                if not self.watch():
                    self.stop_all()
                    return 1
                self.idle(self.poll_seconds)
            return self.wait_all()
        finally:
            for sig, handler in previous.items():
                signal.signal(sig, handler)

    def start_all(self) -> None:
        for slot in self.slots:
            self._start(slot)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.pass_on(signal.Signals(signum))

    def pass_on(self, sig: signal.Signals, *, why: str | None = None) -> None:
        """Stop: every process gets `sig` (SIGTERM: finish the tasks, then stop). `why` is
        for the log when the stop is the supervisor's own decision, not a signal it got."""
        log.info(
            "%s; stopping %d worker processes (each finishes its tasks)",
            why or f"received {sig.name}",
            self.processes,
        )
        self.stopping = True
        for slot in self.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.send_signal(sig)

    def _start(self, slot: _Slot) -> None:
        if self.stopping:
            return
        slot.process = self.start()
        slot.started_at = self.clock()
        if self._stop_requested():  # the stop signal came while it was being started
            slot.process.send_signal(signal.SIGTERM)
        log.info(
            "worker process %d/%d started (pid %d)", slot.number, self.processes, slot.process.pid
        )

    def _stop_requested(self) -> bool:
        return self.stopping  # set by a signal handler at any moment

    def live_pids(self) -> list[str]:
        """The worker processes running now."""
        return [
            str(slot.process.pid)
            for slot in self.slots
            if slot.process is not None and slot.process.poll() is None
        ]

    def watch(self) -> bool:
        """Restart processes that died; False when one keeps dying right after its start."""
        now = self.clock()
        for slot in self.slots:
            if slot.process is None:
                if now >= slot.restart_at:
                    try:
                        self._start(slot)
                    except OSError:  # out of processes or memory: try again later
                        log.exception("worker process %d could not be started", slot.number)
                        slot.restart_at = now + RESTART_DELAY_MAX_SECONDS
                continue
            code = slot.process.poll()
            if code is None or self.stopping:
                continue
            lived = now - slot.started_at
            self.on_exit(slot.process.pid)
            slot.quick_deaths = slot.quick_deaths + 1 if lived < QUICK_DEATH_SECONDS else 0
            if slot.quick_deaths >= MAX_QUICK_DEATHS:
                log.error(
                    "worker process %d died %d times within %.0f s of starting (last exit code "
                    "%s); giving up, see its log above",
                    slot.number,
                    slot.quick_deaths,
                    QUICK_DEATH_SECONDS,
                    code,
                )
                return False
            delay = self.delay(slot.quick_deaths)
            log.error(
                "worker process %d (pid %d) exited with code %s after %.0f s; its unfinished "
                "commands return to the queue; restarting it in %.0f s",
                slot.number,
                slot.process.pid,
                code,
                lived,
                delay,
            )
            slot.process, slot.restart_at = None, now + delay
        return True

    def wait_all(self) -> int:
        codes = [slot.process.wait() for slot in self.slots if slot.process is not None]
        failed = [code for code in codes if code not in (0, -signal.SIGTERM, -signal.SIGINT)]
        if failed:
            log.warning("worker processes ended with codes %s", codes)
        return 1 if failed else 0

    def stop_all(self) -> None:
        """Giving up: SIGTERM to every process, then wait for them."""
        self.pass_on(signal.SIGTERM, why="giving up")
        self.wait_all()


_PR_SET_PDEATHSIG: Final = 1  # prctl(2)


def _stop_with(supervisor: int) -> None:
    """In a worker process: when the supervisor dies, even by SIGKILL, this process gets
    SIGTERM and finishes its tasks, instead of running on unsupervised in its own process
    group, which a kill of the supervisor's group does not reach. Linux only."""
    if not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != supervisor:  # it died before the line above
        os.kill(os.getpid(), signal.SIGTERM)
