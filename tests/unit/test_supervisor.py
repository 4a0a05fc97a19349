"""`run --processes N`: the supervisor keeps N processes running, passes stop signals on,
gives up on a crash loop, and keeps the host's Stripe budget the host's.

The children here are tiny Python processes standing in for workers (the real one is
covered by tests/integration/test_worker_process_restart.py).
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest

from worker.ops.supervisor import (
    MAX_QUICK_DEATHS,
    Supervisor,
    child_command,
    child_environment,
    restart_delay,
)
from worker.settings import load_settings

SLEEPER = [sys.executable, "-c", "import time; time.sleep(60)"]
# Stops at once on SIGTERM with exit code 0, as a worker's warm shutdown does.
GRACEFUL = [
    sys.executable,
    "-c",
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(60)",
]
CRASHER = [sys.executable, "-c", "import sys; sys.exit(3)"]


@pytest.fixture
def supervisors() -> Iterator[list[Supervisor]]:
    made: list[Supervisor] = []
    yield made
    for supervisor in made:  # no stray processes, whatever a test did
        for slot in supervisor.slots:
            if slot.process is not None and slot.process.poll() is None:
                slot.process.kill()
                slot.process.wait()


def supervise(made: list[Supervisor], command: list[str], processes: int) -> Supervisor:
    supervisor = Supervisor(command, {}, processes, poll_seconds=0.05, delay=lambda _n: 0.0)
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


def test_each_child_is_a_single_worker_process_that_skips_migrations() -> None:
    command = child_command()
    assert command[1:4] == ["-m", "worker", "run"]
    assert "--no-migrate" in command
    assert command[command.index("--processes") + 1] == "1"


def test_the_supervisor_command_refuses_to_start_without_a_process_count() -> None:
    # Given the supervisor started by hand, without --processes N
    result = subprocess.run(
        [sys.executable, "-m", "worker.ops.supervisor"], capture_output=True, text=True, check=False
    )
    # Then it says how it is meant to be started, and exits 2
    assert result.returncode == 2
    assert "debit-worker run" in result.stdout


def test_the_supervisor_is_a_small_process_that_imports_none_of_the_worker() -> None:
    # Given a fresh interpreter that imports the supervisor as `python -m` would
    probe = (
        "import sys, worker.ops.supervisor\n"
        "heavy = [m for m in ('celery', 'sqlalchemy', 'stripe', 'pydantic') if m in sys.modules]\n"
        "print(','.join(heavy))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    )
    # Then none of the worker's heavy dependencies is loaded
    assert result.stdout.strip() == ""


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
