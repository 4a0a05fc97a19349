"""The four measurements of one benchmark run, each against the same sandbox and broker."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import amqp
import kombu
from sqlalchemy import select

from bench import load, naive
from bench.services import (
    ACCOUNTS,
    REDIS_URL,
    VENV_BIN,
    CpuSnapshot,
    Services,
    cpu_seconds,
    start,
    stop,
    tree_rss_mb,
)
from schemas.topology import COMMAND_QUEUE
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.tables import debit_requests
from worker.adapters.rate_budget import ENDPOINT_CLASSES
from worker.sandbox.admin_client import SandboxAdmin
from worker.sandbox.faults import Faults
from worker.transport.topology import TASK_QUEUE, declare_all

BUDGET_BURST_SECONDS = 0.9
STRIPE_LIKE = Faults(latency_p50_ms=300, latency_p99_ms=1000, rate_limit_rps=100)


@dataclass
class Setup:
    services: Services
    admin: SandboxAdmin
    api_key: str
    logs: Path
    concurrency: int | None
    processes: int = 1


@dataclass
class Measured:
    name: str
    published: int
    answered: int
    seconds: float
    samples: list[tuple[float, float]] = field(default_factory=list)
    stripe_requests: int = 0
    rate_limited: int = 0
    rss_main_mb: float = 0.0
    rss_tree_mb: float = 0.0
    per_second: list[int] = field(default_factory=list)
    failed: dict[str, int] = field(default_factory=dict)  # failure code → requests
    # where the time went: stage → (p50, p99) seconds, from the ledger's own timestamps
    stages: dict[str, tuple[float, float]] = field(default_factory=dict)
    # CPU milliseconds per answered debit, by process kind (bench.services.cpu_seconds)
    cpu_ms: dict[str, float] = field(default_factory=dict)

    @property
    def throughput(self) -> float:
        return self.answered / self.seconds if self.seconds else 0.0

    @property
    def requests_per_debit(self) -> float:
        return self.stripe_requests / self.answered if self.answered else float("nan")

    def latency(self, share: float, after: float = 0.0) -> float:
        """The `share` percentile of publish → event, of commands published `after` s or
        more after the first."""
        return load.percentile([lat for at, lat in self.samples if at >= after], share)

    def slowest_window(self, width: int = 10, skip: int = 5) -> float:
        """Fewest events per second over any `width`-second window after `skip` seconds."""
        series = self.per_second[skip:]
        if len(series) < width:
            return float("nan")
        return min(sum(series[i : i + width]) / width for i in range(len(series) - width + 1))


class RssSampler:
    def __init__(self, pid: int) -> None:
        self.main = self.tree = 0.0
        self.pid = pid  # the worker's: the soak samples its process tree too
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while not self._stop.wait(0.5):
            main, tree = tree_rss_mb(self.pid)
            self.main, self.tree = max(self.main, main), max(self.tree, tree)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def product_env(
    setup: Setup, *, rate: float, redis: bool, every_endpoint: bool = False
) -> dict[str, str]:
    """The workers' settings. Their charges may go at the global `rate`, as a platform's
    whose POST /v1/charges limit Stripe raised (its default is 25/s); the other endpoints
    keep Stripe's default 25/s, unless `every_endpoint` (a budget that is no budget)."""
    raised = ENDPOINT_CLASSES if every_endpoint else ("charges",)
    env = {
        "DEBIT_WORKER_BROKER_URL": setup.services.broker_url,
        "DEBIT_WORKER_DATABASE_URL": setup.services.database_url,
        "DEBIT_WORKER_STRIPE_API_KEY": setup.api_key,
        "DEBIT_WORKER_STRIPE_API_BASE": setup.admin.url,
        "DEBIT_WORKER_STRIPE_RATE_LIMIT": str(rate),
        "DEBIT_WORKER_STRIPE_ENDPOINT_LIMITS": json.dumps(dict.fromkeys(raised, rate)),
        # Set to the sandbox limiter as an operator who knows the limiter would: its bucket
        # holds a second's worth (100); the budget's burst keeps a tenth of that in reserve.
        "DEBIT_WORKER_STRIPE_RATE_BURST_SECONDS": str(BUDGET_BURST_SECONDS),
        "DEBIT_WORKER_LOG_LEVEL": "WARNING",
        "DEBIT_WORKER_RATE_BUDGET_REDIS_URL": REDIS_URL if redis else "",
        "DEBIT_WORKER_PRODUCER_KEYS": json.dumps(
            {load.BENCH_SIGNER.producer: {load.BENCH_SIGNER.key_id: load.BENCH_SIGNER.secret}}
        ),
    }
    if setup.concurrency:
        env["DEBIT_WORKER_CONCURRENCY"] = str(setup.concurrency)
    env["DEBIT_WORKER_PROCESSES"] = str(setup.processes)
    return env


@contextmanager
def product_worker(setup: Setup, env: dict[str, str]) -> Iterator[RssSampler]:
    process = start(
        [str(VENV_BIN / "debit-worker"), "run", "--no-migrate"], env, setup.logs / "worker.log"
    )
    sampler = RssSampler(process.pid)
    try:
        _wait_for_exchange(setup.services.vhost, "debits.events")
        # The topology is declared before the worker processes consume: load that started
        # then would measure their start-up, not their pace.
        for queue in (COMMAND_QUEUE, TASK_QUEUE):
            _wait_for_consumers(setup.services.vhost, queue, setup.processes)
        yield sampler
    finally:
        sampler.close()
        stop(process)


def declare_topology(setup: Setup) -> None:
    with kombu.Connection(setup.services.broker_url) as connection:
        declare_all(connection.default_channel)


def _wait_for_consumers(vhost: str, queue: str, count: int, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with _connection(vhost) as connection:
        channel = connection.channel()
        while time.monotonic() < deadline:
            try:
                declared = channel.queue_declare(queue, passive=True)
            except amqp.exceptions.NotFound:
                channel = connection.channel()
            else:
                if declared is not None and declared[2] >= count:
                    return
            time.sleep(0.2)
    raise RuntimeError(f"{queue} did not get {count} consumers in {timeout:.0f} s")


def _wait_for_exchange(vhost: str, name: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    with _connection(vhost) as connection:
        while time.monotonic() < deadline:
            channel = connection.channel()
            try:
                channel.exchange_declare(name, "topic", passive=True)
            except amqp.exceptions.NotFound:
                time.sleep(0.2)
                continue
            channel.close()
            return
    raise RuntimeError(f"the worker did not declare {name}")


@contextmanager
def _connection(vhost: str) -> Iterator[amqp.Connection]:
    connection = load.connect(vhost)
    try:
        yield connection
    finally:
        connection.close()


def _counts(admin: SandboxAdmin) -> tuple[int, int]:
    counts = admin.counts()
    stripe_calls = sum(n for route, n in counts.requests.items() if " /v1/" in route)
    return stripe_calls, counts.faults_injected.get("rate_limit_bucket", 0)


def _per_second(timeline: load.Timeline) -> list[int]:
    """Events in each whole second while commands were being published (the seconds after
    the last publish only drain what is left, and would count as a slowdown)."""
    if not timeline.published or not timeline.answered:
        return []
    start = min(timeline.published.values())
    series = [0] * int(max(timeline.published.values()) - start)
    for at in timeline.answered.values():
        second = int(at - start)
        if second < len(series):
            series[second] += 1
    return series


def _measure(
    name: str,
    setup: Setup,
    timeline: load.Timeline,
    run: Callable[[], None],
    rss: RssSampler,
    settle: float,
    before: tuple[int, int] | None = None,
    cpu_before: CpuSnapshot | None = None,
    cpu_since: float | None = None,
) -> Measured:
    """`cpu_since`: the time `cpu_before` was taken, when debits were already being answered
    then; CPU per debit counts only the debits answered from then on."""
    before = before or _counts(setup.admin)
    cpu_before = cpu_before or cpu_seconds()
    run()
    load.wait_for(timeline, len(timeline.published), settle)
    cpu_after = cpu_seconds()
    after = _counts(setup.admin)
    # Throughput is events per second between the first event and the last: the rate the
    # worker answers at. (Counting from the first publish would add one request's latency
    # to a 60 s run and call it slowness.)
    answers = timeline.answered.values()
    seconds = max(answers) - min(answers) if len(answers) > 1 else float("nan")
    return Measured(
        name=name,
        published=len(timeline.published),
        answered=len(timeline.answered),
        seconds=seconds,
        samples=timeline.samples(),
        stripe_requests=after[0] - before[0],
        rate_limited=after[1] - before[1],
        rss_main_mb=rss.main,
        rss_tree_mb=rss.tree,
        per_second=_per_second(timeline),
        failed=dict(Counter(timeline.failed.values())),
        stages=stage_breakdown(setup.services.database_url, timeline),
        cpu_ms=_cpu_per_debit(cpu_after.spent_since(cpu_before), timeline, cpu_since),
    )


def _cpu_per_debit(
    spent: dict[str, float], timeline: load.Timeline, since: float | None
) -> dict[str, float]:
    answered = sum(1 for at in timeline.answered.values() if since is None or at >= since)
    if not answered:
        return {}
    return {kind: seconds * 1000 / answered for kind, seconds in spent.items()}


STAGES = (
    ("publish → claimed", "published", "received"),
    ("claimed → Stripe call", "received", "attempt"),
    ("Stripe call → recorded", "attempt", "finished"),
    ("recorded → event", "finished", "answered"),
)


def stage_spans(database_url: str, timeline: load.Timeline) -> list[tuple[float, dict[str, float]]]:
    """(published at, seconds spent in each stage) of every answered request, from the
    ledger's timestamps (claimed, first Stripe attempt, outcome recorded). Nothing for the
    naive worker, which keeps no ledger."""
    ids = list(timeline.answered)
    if not ids:
        return []
    engine = make_engine(database_url, pool_size=1)
    columns = (
        debit_requests.c.request_id,
        debit_requests.c.received_at,
        debit_requests.c.first_attempt_at,
        debit_requests.c.finished_at,
    )
    rows: list[Any] = []
    try:
        with engine.connect() as conn:
            # In chunks: a soak's ids are more than PostgreSQL's 65,535 parameters.
            for start in range(0, len(ids), 10_000):
                chunk = ids[start : start + 10_000]
                query = select(*columns).where(debit_requests.c.request_id.in_(chunk))
                rows += conn.execute(query).all()
    finally:
        engine.dispose()
    spans: list[tuple[float, dict[str, float]]] = []
    for request_id, received, attempt, finished in rows:
        if attempt is None or finished is None:
            continue
        at = {
            "published": timeline.published[request_id],
            "received": received.timestamp(),
            "attempt": attempt.timestamp(),
            "finished": finished.timestamp(),
            "answered": timeline.answered[request_id],
        }
        spans.append((at["published"], {name: at[b] - at[a] for name, a, b in STAGES}))
    return spans


def stage_breakdown(database_url: str, timeline: load.Timeline) -> dict[str, tuple[float, float]]:
    """p50 and p99 of each stage of publish → event (`stage_spans`)."""
    spans = stage_spans(database_url, timeline)
    return {
        name: (load.percentile(values, 0.5), load.percentile(values, 0.99))
        for name, _, _ in STAGES
        if (values := [stages[name] for _, stages in spans])
    }


def ours_at_stripe_rate(
    setup: Setup,
    rate: float,
    duration: float,
    *,
    name: str = "ours",
    prefix: str = "ours",
    alongside: AbstractContextManager[object] | None = None,
) -> Measured:
    """Our worker (Redis budget of 100/s) against a Stripe-like sandbox at a steady rate.

    `prefix` starts each request id (a second run in the same ledger needs its own);
    `alongside` is entered once the workers consume, just before the load starts, and left
    once the run is measured: something else using the machine and the budget meanwhile."""
    setup.admin.set_faults(STRIPE_LIKE)
    env = product_env(setup, rate=100, redis=True)
    with product_worker(setup, env) as rss:
        timeline = load.Timeline()
        listener = load.EventListener(setup.services.vhost, timeline, load.bind_events)
        publisher = load.ConfirmedPublisher(setup.services.vhost)

        def run() -> None:
            load.steady(rate, duration, publisher, timeline, prefix)
            publisher.close()

        try:
            with alongside or nullcontext():
                return _measure(name, setup, timeline, run, rss, settle=30)
        finally:
            listener.close()
            publisher.abandon()


def naive_at_stripe_rate(setup: Setup, rate: float, duration: float) -> Measured:
    """The naive worker under the same offered load; what it has not done after the run
    (plus a few seconds) is not waited for."""
    setup.admin.set_faults(STRIPE_LIKE)
    env = _naive_env(setup)
    process = start(_celery("-Q", naive.NAIVE_QUEUE), env, setup.logs / "naive.log")
    rss = RssSampler(process.pid)
    naive.app.conf.update(broker_url=setup.services.broker_url)
    timeline = load.Timeline()

    def bind(channel: Any) -> str:
        channel.queue_declare(naive.EVENTS_QUEUE, durable=True, auto_delete=False)
        return naive.EVENTS_QUEUE

    listener = load.EventListener(setup.services.vhost, timeline, bind)

    def publish(request_id: str, index: int) -> None:
        account = ACCOUNTS[index % len(ACCOUNTS)]
        naive.debit.apply_async(args=(request_id, account, 1, "usd"), queue=naive.NAIVE_QUEUE)

    try:
        time.sleep(3)  # prefork start-up
        return _measure(
            "naive",
            setup,
            timeline,
            lambda: load.steady(rate, duration, publish, timeline, "naive"),
            rss,
            settle=5,
        )
    finally:
        listener.close()
        rss.close()
        stop(process, grace=5)


def _naive_env(setup: Setup) -> dict[str, str]:
    return {
        "BENCH_BROKER_URL": setup.services.broker_url,
        "BENCH_STRIPE_KEY": setup.api_key,
        "BENCH_STRIPE_BASE": setup.admin.url,
    }


def _celery(*args: str) -> list[str]:
    return [str(VENV_BIN / "celery"), "-A", "bench.naive", "worker", "--loglevel=WARNING", *args]


def ours_without_latency(setup: Setup, count: int) -> Measured:
    """The whole pipeline at zero Stripe latency and no budget: a backlog of `count` commands
    drained by a freshly started worker; throughput from its first event to its last."""
    setup.admin.set_faults(Faults())
    timeline = load.Timeline()
    listener = load.EventListener(setup.services.vhost, timeline, load.bind_events)
    publisher = load.ConfirmedPublisher(setup.services.vhost)
    try:
        for index in range(count):
            request_id = f"fast-{index:07d}"
            timeline.published[request_id] = time.time()
            publisher(request_id, index)
        publisher.close()
        env = product_env(setup, rate=1_000_000, redis=False, every_endpoint=True)
        before = _counts(setup.admin)  # the workers start on the backlog at once
        with product_worker(setup, env) as rss:
            # CPU from the moment every worker process consumes: their start-up (imports,
            # connections; seconds of CPU) is not a cost per debit. The debits answered
            # before then are left out of the count it is divided by.
            cpu_since, cpu_before = time.time(), cpu_seconds()
            measured = _measure(
                "ours, zero latency",
                setup,
                timeline,
                lambda: None,
                rss,
                120,
                before,
                cpu_before,
                cpu_since,
            )
    finally:
        listener.close()
        publisher.abandon()
    first = min(timeline.answered.values(), default=0.0)
    last = max(timeline.answered.values(), default=0.0)
    measured.seconds = last - first
    measured.samples = []
    return measured


def bare_celery_noop(setup: Setup, count: int, concurrency: int) -> Measured:
    """Celery's own ceiling: `count` no-op tasks drained by threads-pool workers, as many
    processes and threads as ours."""
    naive.app.conf.update(broker_url=setup.services.broker_url)
    with naive.app.producer_or_acquire() as producer:
        for _ in range(count):
            naive.noop.apply_async(queue=naive.NOOP_QUEUE, producer=producer)
    processes = [
        start(
            _celery(
                "-Q",
                naive.NOOP_QUEUE,
                "-P",
                "threads",
                f"--concurrency={concurrency}",
                f"--hostname=noop{number}@%h",
            ),
            _naive_env(setup),
            setup.logs / f"noop{number}.log",
        )
        for number in range(setup.processes)
    ]
    first = last = 0.0
    try:
        with _connection(setup.services.vhost) as connection:
            channel = connection.channel()
            while True:
                declared = channel.queue_declare(naive.NOOP_QUEUE, passive=True)
                assert declared is not None
                waiting = declared[1]
                now = time.monotonic()
                if waiting < count and not first:
                    first = now
                if waiting == 0:
                    last = now
                    break
                time.sleep(0.02)
    finally:
        for process in processes:
            stop(process, grace=10)
    return Measured("bare Celery no-op", count, count, last - first)
