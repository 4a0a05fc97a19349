"""`run --processes N`: the supervisor keeps N processes running, passes stop signals on,
gives up on a crash loop, and keeps the host's Stripe budget the host's; each process is a
fork of it that starts as a new interpreter would and exits as one does.

The children here are forks running tiny functions that stand in for workers (the real one
is covered by tests/integration/test_worker_process_restart.py).
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from worker.ops.health import ProbeServer
from worker.ops.supervisor import (
    MAX_QUICK_DEATHS,
    Forker,
    Supervisor,
    child_environment,
    restart_delay,
)
from worker.settings import load_settings


def sleeper() -> None:
    time.sleep(60)


def graceful() -> None:
    """Stops at once on SIGTERM with exit code 0, as a worker's warm shutdown does."""
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    time.sleep(60)


def crasher() -> None:
    sys.exit(3)


SLEEPER, GRACEFUL, CRASHER = Forker(sleeper), Forker(graceful), Forker(crasher)


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for supervisor in made:  # no stray processes, whatever a test did
        for slot in supervisor.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()


def supervise(made: list[Supervisor], start: Forker, processes: int) -> Supervisor:
    supervisor = Supervisor(start, processes, poll_seconds=0.05, delay=lambda _n: 0.0)
    made.append(supervisor)
    return supervisor


def wait_for(condition: Callable[[], bool], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def pids(supervisor: Supervisor) -> list[int]:
    return [slot.process.pid for slot in supervisor.slots if slot.process is not None]


def test_it_starts_the_number_of_processes_asked_for(supervisors: list[Supervisor]) -> None:
    # Given a supervisor of three processes
    supervisor = supervise(supervisors, SLEEPER, 3)
    # When it starts
    supervisor.start_all()
    # Then three distinct processes run
    assert len(set(pids(supervisor))) == 3
    assert all(slot.process and slot.process.poll() is None for slot in supervisor.slots)


def test_a_process_that_dies_is_replaced_and_the_others_are_left_alone(
    supervisors: list[Supervisor],
) -> None:
    # Given two running processes
    supervisor = supervise(supervisors, SLEEPER, 2)
    supervisor.start_all()
    first, second = pids(supervisor)
    # When the first is killed
    supervisor.slots[0].process.kill()  # type: ignore[union-attr]
    supervisor.slots[0].process.wait()  # type: ignore[union-attr]

    def replaced() -> bool:
        assert supervisor.watch()
        now = pids(supervisor)
        return len(now) == 2 and first not in now

    # Then the supervisor starts a new one in its place, and the second keeps running
    wait_for(replaced)
    assert second in pids(supervisor)


def test_a_stop_signal_reaches_every_process_and_a_clean_stop_exits_0(
    supervisors: list[Supervisor],
) -> None:
    # Given two running processes that stop cleanly on SIGTERM
    supervisor = supervise(supervisors, GRACEFUL, 2)
    supervisor.start_all()
    time.sleep(0.5)  # let them install their handler
    # When the supervisor is asked to stop
    supervisor.pass_on(signal.SIGTERM)
    # Then every process ends, none is restarted, and the exit code is 0
    assert supervisor.wait_all() == 0
    assert supervisor.watch()
    assert all(slot.process and slot.process.poll() == 0 for slot in supervisor.slots)


def test_a_process_that_keeps_dying_at_start_makes_the_supervisor_give_up(
    supervisors: list[Supervisor],
) -> None:
    # Given a process that exits as soon as it starts (a broken configuration, say)
    supervisor = supervise(supervisors, CRASHER, 1)
    supervisor.start_all()
    # When the supervisor watches it die again and again
    verdicts: list[bool] = []

    def gave_up() -> bool:
        verdicts.append(supervisor.watch())
        return not verdicts[-1]

    wait_for(gave_up)
    # Then it gives up after the allowed number of quick deaths, instead of looping forever
    assert supervisor.slots[0].quick_deaths == MAX_QUICK_DEATHS


def test_giving_up_says_so_instead_of_blaming_a_signal(
    supervisors: list[Supervisor], caplog: pytest.LogCaptureFixture
) -> None:
    # Given a running process
    supervisor = supervise(supervisors, GRACEFUL, 1)
    supervisor.start_all()
    time.sleep(0.5)  # let it install its handler
    # When the supervisor stops everything of its own accord
    with caplog.at_level(logging.INFO, logger="worker.ops.supervisor"):
        supervisor.stop_all()
    # Then its log says it gave up, and nobody sent it a signal
    stops = [r.getMessage() for r in caplog.records if "stopping" in r.getMessage()]
    assert stops == ["giving up; stopping 1 worker processes (each finishes its tasks)"]
    assert all(slot.process and slot.process.poll() == 0 for slot in supervisor.slots)


def test_restart_delays_grow_while_a_process_keeps_dying_and_are_capped() -> None:
    assert [restart_delay(n) for n in range(6)] == [0.0, 1.0, 3.0, 7.0, 15.0, 30.0]


def test_without_redis_each_process_gets_its_share_of_the_hosts_stripe_rate() -> None:
    # Given a host allowed 100 Stripe requests/s, no shared budget, four processes
    settings = load_settings(stripe_api_key="sk_live_x", stripe_rate_limit=100.0)
    # When the children's environment is made
    env = child_environment(settings, 4)
    # Then each process allows itself a quarter, so together they stay at 100/s
    assert float(env["DEBIT_WORKER_STRIPE_RATE_LIMIT"]) == 25.0


def test_with_redis_the_budget_stays_shared_and_its_fallback_is_divided() -> None:
    # Given a Redis-shared budget, and four processes
    settings = load_settings(
        stripe_api_key="sk_live_x",
        stripe_rate_limit=100.0,
        rate_budget_redis_url="redis://127.0.0.1:6379/0",
    )
    env = child_environment(settings, 4)
    # Then the rate is not divided (Redis shares it), but the Redis-down fallback is
    assert env.get("DEBIT_WORKER_STRIPE_RATE_LIMIT") == os.environ.get(
        "DEBIT_WORKER_STRIPE_RATE_LIMIT"
    )
    assert env["DEBIT_WORKER_RATE_BUDGET_PROCESSES"] == "4"


def test_a_stop_that_comes_before_every_process_started_starts_no_more(
    supervisors: list[Supervisor],
) -> None:
    # Given a supervisor asked to stop while it was starting its processes
    supervisor = supervise(supervisors, GRACEFUL, 3)
    supervisor.stopping = True
    # When it gets to starting them
    supervisor.start_all()
    # Then none is started that would never be told to stop
    assert pids(supervisor) == []
    assert supervisor.wait_all() == 0


def test_each_process_has_a_process_group_of_its_own(supervisors: list[Supervisor]) -> None:
    # Given a running supervisor (so a terminal's Ctrl-C reaches only it, and it passes the
    # signal on once: a second SIGINT would make a Celery worker stop without its tasks)
    supervisor = supervise(supervisors, SLEEPER, 2)
    supervisor.start_all()
    # Then no child is in the supervisor's process group
    assert all(os.getpgid(pid) == pid for pid in pids(supervisor))
    assert os.getpgid(os.getpid()) not in {os.getpgid(pid) for pid in pids(supervisor)}


# --- each process: a fork that starts and ends as a new interpreter would ------------------


def interrupted() -> None:
    raise RuntimeError("a bug")


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (lambda: None, 0),
        (crasher, 3),
        (lambda: sys.exit("a reason"), 1),
        (interrupted, 1),
    ],
    ids=["returns", "exit-3", "exit-with-a-message", "exception"],
)
def test_a_forked_process_exits_with_the_code_a_new_interpreter_would(
    body: Callable[[], None], code: int
) -> None:
    # Given a process forked to run `body` / When it ends / Then its exit code is the one
    # `python -c body` would have
    assert Forker(body)().wait() == code


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_ends_a_forked_process_as_it_ends_a_new_one_not_as_it_ends_the_supervisor(
    sig: signal.Signals, tmp_path: Path
) -> None:
    # Given a supervisor whose own handler for the signal would mark that it ran
    marker = tmp_path / "the supervisor's handler ran"
    previous = signal.signal(sig, lambda *_: marker.touch())
    try:
        # When a process is forked and gets the signal at once
        child = Forker(sleeper)()
        child.send_signal(sig)
        code = child.wait()
    finally:
        signal.signal(sig, previous)
    # Then it ended by the signal, as a new interpreter does, and never ran that handler
    # (which in a real supervisor would pass the signal on to the process's siblings)
    assert code == -sig
    assert not marker.exists()


def test_a_forked_process_waits_for_its_threads_and_runs_its_exit_handlers(
    tmp_path: Path,
) -> None:
    # Given a process that leaves a thread running and registers an exit handler
    thread_done, handler_ran = tmp_path / "thread", tmp_path / "atexit"

    def late() -> None:
        time.sleep(0.2)
        thread_done.touch()

    def body() -> None:
        atexit.register(handler_ran.touch)
        threading.Thread(target=late).start()

    # When its body returns
    code = Forker(body)().wait()
    # Then, as at an interpreter's exit, the thread finished and the handler ran
    assert code == 0
    assert thread_done.exists()
    assert handler_ran.exists()


def test_a_forked_process_configures_its_own_logging() -> None:
    # Given a supervisor whose root logger has a handler
    root, handler = logging.getLogger(), logging.NullHandler()
    root.addHandler(handler)
    try:
        # When a process is forked / Then it starts without it, as a new interpreter does
        code = Forker(lambda: sys.exit(1 if root.handlers else 0))().wait()
    finally:
        root.removeHandler(handler)
    assert code == 0


def test_a_forked_process_keeps_no_copy_of_the_supervisors_endpoint_socket() -> None:
    # Given the supervisor's endpoint listening, and a process forked after it
    server = ProbeServer.listen("127.0.0.1", 0, lambda: pytest.fail("no request is made"))
    assert server is not None
    port = server.port
    child = Forker(sleeper, servers=[server])()
    try:
        # When the supervisor closes the endpoint (as when it stops)
        server.close()

        def port_free() -> bool:
            with socket.socket() as again:
                try:
                    again.bind(("127.0.0.1", port))
                except OSError:
                    return False
                return True

        # Then the port is free: the process closed its copy of the socket
        wait_for(port_free)
    finally:
        child.kill()
        child.wait()
