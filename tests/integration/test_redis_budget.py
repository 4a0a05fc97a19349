"""The shared Stripe rate budget on a real Redis: many processes and threads, one limit;
Redis away, a local share of it; Redis back, the shared budget again; reconciliation reads
in another process only take what the debits leave spare."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import socket
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from worker.adapters.redis_budget import RedisRateBudget

pytestmark = pytest.mark.integration

REDIS_URL = "redis://127.0.0.1:6379/0"
RATE = 40.0
BURST = 4.0


@pytest.fixture
def key() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1)
    try:
        client.ping()
    except redis.ConnectionError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"CI is set but Redis is not reachable ({exc})")
        pytest.skip(f"Redis is not reachable ({exc})")
    name = f"debit-test:budget:{uuid.uuid4().hex}"
    yield name
    client.delete(name)


def _take_until(key: str, start: float, deadline: float, threads: int, stamps: list[float]) -> None:
    budget = RedisRateBudget.from_url(REDIS_URL, key, RATE, burst=BURST)
    time.sleep(max(0.0, start - time.time()))

    def loop() -> None:
        while True:
            budget.acquire()
            now = time.time()
            if now >= deadline:
                return
            stamps.append(now)

    workers = [threading.Thread(target=loop) for _ in range(threads)]
    for thread in workers:
        thread.start()
    for thread in workers:
        thread.join()


def _child(
    key: str, start: float, deadline: float, threads: int, out: multiprocessing.Queue[float]
) -> None:
    stamps: list[float] = []
    _take_until(key, start, deadline, threads, stamps)
    for stamp in stamps:
        out.put(stamp)
    out.put(-1.0)


def test_processes_and_threads_sharing_a_budget_never_exceed_rate_times_time_plus_burst(
    key: str,
) -> None:
    # Given three processes (two spawned, this one) with 6 threads each, one Redis budget
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[float] = context.Queue()
    start = time.time() + 1.0  # the children need a moment to import
    duration = 2.5
    deadline = start + duration
    children = [
        context.Process(target=_child, args=(key, start, deadline, 6, out)) for _ in range(2)
    ]
    for child in children:
        child.start()

    # When every thread takes tokens as fast as it can until the deadline
    stamps: list[float] = []
    _take_until(key, start, deadline, 6, stamps)
    finished = 0
    while finished < len(children):
        stamp = out.get(timeout=30)
        if stamp < 0:
            finished += 1
        else:
            stamps.append(stamp)
    for child in children:
        child.join(timeout=10)

    # Then the total stays within rate x T + burst, and the budget is used, not wasted
    assert len(stamps) <= RATE * duration + BURST
    assert len(stamps) >= 0.85 * RATE * duration
    # And no one-second window holds more than rate + burst (+1 for wake-up jitter)
    ordered = sorted(stamps)
    busiest = max(sum(1 for s in ordered[i:] if s < first + 1.0) for i, first in enumerate(ordered))
    assert busiest <= RATE + BURST + 1


def _spare_reads(
    key: str, start: float, deadline: float, out: multiprocessing.Queue[float]
) -> None:
    budget = RedisRateBudget.from_url(REDIS_URL, key, RATE, burst=BURST)
    time.sleep(max(0.0, start - time.time()))
    while True:
        budget.acquire_spare()
        now = time.time()
        if now >= deadline:
            break
        out.put(now)
    out.put(-1.0)


def test_reads_in_another_process_wait_while_debits_use_the_whole_budget_then_go(
    key: str,
) -> None:
    # Given a process taking low-priority tokens for reconciliation reads from the shared
    # budget, and this process's 6 debit threads asking for more than the budget allows
    context = multiprocessing.get_context("spawn")
    out: multiprocessing.Queue[float] = context.Queue()
    start = time.time() + 1.0  # the child needs a moment to import
    load = 2.0
    debits_until = start + load
    reads_until = debits_until + 1.0
    reader = context.Process(target=_spare_reads, args=(key, start, reads_until, out))
    reader.start()

    # When the debits run at full load for two seconds, then stop
    debits: list[float] = []
    _take_until(key, start, debits_until, 6, debits)
    reads: list[float] = []
    while (stamp := out.get(timeout=30)) >= 0:
        reads.append(stamp)
    reader.join(timeout=10)

    # Then the debits kept (nearly) the whole budget: the reads took at most the tokens saved
    # up above half the burst when both started, and then waited
    assert len(debits) >= 0.95 * RATE * load
    during = [stamp for stamp in reads if stamp < debits_until]
    assert len(during) <= BURST / 2 + 1
    # And once the debits stopped, the reads went on (after the slots the debits had already
    # reserved), at well over half the rate on this shared machine
    after = [stamp for stamp in reads if stamp >= debits_until]
    assert len(after) >= 0.5 * RATE * (reads_until - debits_until)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def _start_redis(port: int) -> subprocess.Popen[bytes]:
    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    assert server is not None
    process = subprocess.Popen(
        [server, "--port", str(port), "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, socket_connect_timeout=0.2)
    for _ in range(100):
        try:
            client.ping()
        except redis.ConnectionError:
            time.sleep(0.05)
        else:
            return process
    process.kill()
    raise AssertionError("redis-server did not start")


def _rate_over(budget: RedisRateBudget, seconds: float) -> float:
    budget.acquire()  # spend the saved-up burst first
    count, start = 0, time.monotonic()
    while time.monotonic() - start < seconds:
        budget.acquire()
        count += 1
    return count / (time.monotonic() - start)


def test_redis_going_away_leaves_each_process_its_share_and_its_return_restores_sharing(
    key: str,
) -> None:
    # Given a budget of 40/s shared by 4 processes, on a Redis of its own
    port = _free_port()
    server = _start_redis(port)
    url = f"redis://127.0.0.1:{port}/0"
    budget = RedisRateBudget.from_url(url, key, RATE, burst=1, processes=4, retry_seconds=0.5)
    fresh = redis.Redis.from_url(url)
    try:
        budget.acquire()
        assert fresh.exists(key)

        # When Redis goes away
        server.terminate()
        server.wait(timeout=10)
        # Then acquiring still works, locally, at a quarter of the rate
        assert _rate_over(budget, 1.0) <= RATE / 4 + 1

        # When Redis comes back (empty: it kept nothing)
        server = _start_redis(port)
        assert not fresh.exists(key)
        time.sleep(0.6)
        budget.acquire()
        # Then the shared budget is used again
        assert fresh.exists(key)
    finally:
        server.kill()
        server.wait(timeout=10)


def test_reads_with_redis_away_take_spare_tokens_of_the_local_share(key: str) -> None:
    # Given a budget of 40/s shared by 4 processes, whose Redis is not there
    url = f"redis://127.0.0.1:{_free_port()}/0"
    budget = RedisRateBudget.from_url(url, key, RATE, burst=1, processes=4, retry_seconds=60)

    # When reconciliation reads take tokens for a second
    budget.acquire_spare()
    count, start = 0, time.monotonic()
    while time.monotonic() - start < 1.0:
        budget.acquire_spare()
        count += 1

    # Then they still go, locally, at no more than this process's quarter of the rate
    assert 1 <= count <= RATE / 4 + 1
