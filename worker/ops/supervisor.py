"""`debit-worker run --processes N`: several worker processes on one host, kept running.

One worker process uses about one core (one interpreter lock); N processes, each with its own
threads, connections and ledger pool, use N. This parent starts them, restarts one that dies
(as Celery's prefork pool would), and passes SIGTERM/SIGINT on so that each finishes its tasks.
The Stripe rate budget stays the host's: shared through Redis when
DEBIT_WORKER_RATE_BUDGET_REDIS_URL is set, otherwise split evenly between the processes.

`run` checks the settings and migrates (each worker process declares the topology), then execs
`python -m worker.ops.supervisor`, which imports nothing of the worker, so that the supervisor
stays a small process instead of a second copy of a worker's memory. With
DEBIT_WORKER_METRICS_PORT it also serves the metrics and health endpoint
(worker/ops/health.py) for all of them: the worker processes record their metrics in files of
a shared directory (PROMETHEUS_MULTIPROC_DIR), which it serves summed; it loads the ledger and
metrics code that needs on the endpoint's first call.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from worker.settings import Settings

# Named, not __name__: run as `python -m worker.ops.supervisor`, __name__ would be "__main__".
log = logging.getLogger("worker.ops.supervisor")

# A process that dies sooner than this after its start counts as a crash loop.
QUICK_DEATH_SECONDS: Final = 30.0
MAX_QUICK_DEATHS: Final = 5
RESTART_DELAY_MAX_SECONDS: Final = 30.0


def child_environment(settings: Settings, processes: int) -> dict[str, str]:
    """The environment of each child: this one, with the host's budget divided."""
    env = dict(os.environ)
    env["DEBIT_WORKER_CONCURRENCY"] = str(settings.concurrency)
    env["DEBIT_WORKER_LOG_LEVEL"] = settings.log_level
    # The supervisor serves the endpoint; `main` gives the processes port 0.
    env["DEBIT_WORKER_METRICS_PORT"] = str(settings.metrics_port)
    env["DEBIT_WORKER_METRICS_HOST"] = settings.metrics_host
    if settings.rate_budget_redis_url is None:
        # Each process keeps its own bucket: together they must not exceed the host's rate.
        env["DEBIT_WORKER_STRIPE_RATE_LIMIT"] = repr(settings.effective_stripe_rate / processes)
    elif settings.rate_budget_processes == 1:
        # While Redis is unreachable, each process falls back to its share of the rate.
        env["DEBIT_WORKER_RATE_BUDGET_PROCESSES"] = str(processes)
    return env


def child_command() -> list[str]:
    return [sys.executable, "-m", "worker", "run", "--no-migrate", "--processes", "1"]


def supervisor_command(processes: int) -> list[str]:
    return [sys.executable, "-m", "worker.ops.supervisor", "--processes", str(processes)]


def exec_supervisor(settings: Settings, processes: int) -> None:
    """Become the supervisor (never returns)."""
    command = supervisor_command(processes)
    os.execve(command[0], command, child_environment(settings, processes))  # noqa: S606


def main(argv: list[str] | None = None) -> int:
    """`python -m worker.ops.supervisor --processes N`, with the children's environment."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] != "--processes" or not args[1].isdigit():
        print("usage: python -m worker.ops.supervisor --processes N (use `debit-worker run`)")
        return 2
    logging.basicConfig(
        level=os.environ.get("DEBIT_WORKER_LOG_LEVEL", "INFO"),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    processes = int(args[1])
    port = int(os.environ.get("DEBIT_WORKER_METRICS_PORT") or 0)
    if port == 0:
        return Supervisor(child_command(), dict(os.environ), processes).run()
    return _run_serving(processes, os.environ.get("DEBIT_WORKER_METRICS_HOST", ""), port)


def _run_serving(processes: int, host: str, port: int) -> int:
    """Supervise, serving the metrics and health endpoint between checks on the processes."""
    from worker.ops.health import (  # noqa: PLC0415 - only when serving
        Endpoints,
        ProbeServer,
        forget_process,
        metrics_directory,
    )

    # Not in this process's own environment: the supervisor records no metrics of its own.
    given = os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
    with metrics_directory(given) as directory:
        env = dict(os.environ)
        env.update(PROMETHEUS_MULTIPROC_DIR=directory, DEBIT_WORKER_METRICS_PORT="0")
        supervisor = Supervisor(
            child_command(), env, processes, on_exit=lambda pid: forget_process(directory, pid)
        )

        def endpoints() -> Endpoints:
            from worker.ops.probe_endpoints import for_supervisor  # noqa: PLC0415 - on first use

            return for_supervisor(directory, supervisor.live_pids, processes)

        server = ProbeServer.listen(host, port, endpoints)
        if server is not None:
            supervisor.idle = server.serve_for
        try:
            return supervisor.run()
        finally:
            if server is not None:
                server.close()


@dataclass
class _Slot:
    number: int
    process: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    quick_deaths: int = 0
    restart_at: float = 0.0


def restart_delay(quick_deaths: int) -> float:
    """0 s after a process that ran a while, then 1, 3, 7 … up to 30 s while it keeps dying."""
    return min(RESTART_DELAY_MAX_SECONDS, 2.0**quick_deaths - 1)


@dataclass
class Supervisor:
    command: list[str]
    env: dict[str, str]
    processes: int
    clock: Callable[[], float] = time.monotonic
    poll_seconds: float = 0.5
    delay: Callable[[int], float] = restart_delay
    # Between two checks on the processes (the endpoint serves requests meanwhile).
    idle: Callable[[float], None] = time.sleep
    # A process ended (its pid), before it is restarted.
    on_exit: Callable[[int], None] = lambda _pid: None
    slots: list[_Slot] = field(init=False)
    stopping: bool = field(default=False, init=False)

    def __post_init__(self) -> None:
        self.slots = [_Slot(number) for number in range(1, self.processes + 1)]

    def run(self) -> int:
        """Until a signal asks to stop (0) or a process keeps dying at start-up (1)."""
        previous = {
            sig: signal.signal(sig, self._on_signal) for sig in (signal.SIGTERM, signal.SIGINT)
        }
        try:
            self.start_all()
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
        # A process group of its own: a terminal's Ctrl-C reaches the supervisor only, which
        # passes it on once (a second SIGINT would make Celery stop without finishing tasks).
        slot.process = subprocess.Popen(  # noqa: S603 (our own CLI)
            self.command,
            env=self.env,
            process_group=0,
            preexec_fn=_stop_with(os.getpid()),  # noqa: PLW1509 (the supervisor has no threads)
        )
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


def _stop_with(supervisor: int) -> Callable[[], None] | None:
    """Run in each worker process between fork and exec (the supervisor has no threads):
    when the supervisor dies, even by SIGKILL, the process gets SIGTERM and finishes its tasks,
    instead of running on unsupervised in its own process group, which a kill of the
    supervisor's group does not reach. Linux only; elsewhere nothing is set."""
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)  # loaded here, not in the forked child

    def set_parent_death_signal() -> None:
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != supervisor:  # it died before the line above
            os.kill(os.getpid(), signal.SIGTERM)

    return set_parent_death_signal


if __name__ == "__main__":
    sys.exit(main())
