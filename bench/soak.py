"""Steady over time (`soak`): the load of "ours" near the full budget for `--soak-minutes`,
sampling every 10 s the memory, open files and threads of every worker process (and the
memory of the sandbox, RabbitMQ and the database's PostgreSQL backends), the workers'
connections to RabbitMQ, PostgreSQL, Redis and Stripe (the sandbox), and PostgreSQL's own
count of the database's connections; publish → event latency per minute from the timeline.

The workers' connections are counted from their own sockets (/proc), not by asking
RabbitMQ: `rabbitmqctl` costs a second of CPU a call, which on two cores would be part of
what is measured.

The offered rate is "ours"' (`--rate`, 97/s against the budget of 100 requests/s), not the
whole budget: a queue offered exactly what it can serve has no steady state (the few reads
beside the debits, account facts and the daily proof, leave slightly less than 100/s for
them), so its latency would climb for the whole soak whatever the worker did."""

from __future__ import annotations

import math
import statistics
import threading
import time
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final
from urllib.parse import urlsplit

import psycopg

from bench import load
from bench.phases import (
    STAGES,
    STRIPE_LIKE,
    Measured,
    Setup,
    _counts,
    _per_second,
    product_env,
    product_worker,
    stage_spans,
)
from bench.procfs import SERVICE_PORTS, ProcessStat, connections, descendants, stat
from bench.scale_out import FULL_BUDGET
from bench.services import POSTGRES
from worker.sandbox.admin_client import SandboxAdmin

SAMPLE_SECONDS: Final = 10.0
MEMORY_GROWTH: Final = 0.05  # after the first window, at most
P99_GROWTH: Final = 0.10  # the last window's p99 over the first's, at most
WORKER = "worker"  # the label of each process of our worker's tree starts with it


@dataclass(frozen=True)
class Windows:
    """The spans a soak of `total` seconds is judged on: its first and last `edge` seconds
    (5 minutes of a 30-minute soak) for latency; for memory and counts, the median over
    `tail` seconds right after the first `edge` (the baseline) and at the end."""

    total: float

    @property
    def edge(self) -> float:
        return min(300.0, self.total / 3)

    @property
    def tail(self) -> float:
        return min(60.0, self.total / 6)

    def baseline(self, at: float) -> bool:
        return self.edge <= at < self.edge + self.tail

    def end(self, at: float) -> bool:
        return self.total - self.tail <= at <= self.total


def change(series: Iterable[tuple[float, float]], windows: Windows) -> tuple[float, float]:
    """(baseline, end) medians of a series of (seconds, value); nan where no sample fell."""
    points = list(series)

    def median(inside: list[float]) -> float:
        return statistics.median(inside) if inside else math.nan

    return (
        median([v for at, v in points if windows.baseline(at)]),
        median([v for at, v in points if windows.end(at)]),
    )


def growth(series: Iterable[tuple[float, float]], windows: Windows) -> float:
    """Relative growth from the baseline to the end (0.03: 3 % more)."""
    baseline, end = change(series, windows)
    return end / baseline - 1 if baseline else math.nan


def p99_per_minute(samples: Sequence[tuple[float, float]]) -> list[float]:
    """p99 of publish → event of the commands published in each minute."""
    minutes: dict[int, list[float]] = {}
    for at, latency in samples:
        minutes.setdefault(int(at // 60), []).append(latency)
    return [load.percentile(minutes.get(m, []), 0.99) for m in range(max(minutes, default=-1) + 1)]


def p99_first_last(samples: Sequence[tuple[float, float]], windows: Windows) -> tuple[float, float]:
    """p99 of the commands published in the first `edge` seconds, and in the last."""
    first = [lat for at, lat in samples if at < windows.edge]
    last = [lat for at, lat in samples if at >= windows.total - windows.edge]
    return load.percentile(first, 0.99), load.percentile(last, 0.99)


@dataclass(frozen=True)
class Sample:
    at: float  # seconds since the load started
    processes: dict[str, ProcessStat]  # "worker process 1234", "sandbox", "rabbitmq", …
    connections: dict[str, int]  # the workers' sockets by service; "postgresql (server)"
    backends_rss_mb: float  # the database's PostgreSQL backends, all together


@dataclass(frozen=True)
class Soak:
    minutes: float
    rate: float  # debits/s offered
    measured: Measured
    samples: list[Sample]
    budget: float = FULL_BUDGET  # Stripe requests/s
    # p99 seconds of each stage of publish → event, by the minute commands were published:
    # where the time went when the latency moved.
    stages_by_minute: list[dict[str, float]] = field(default_factory=list)

    @property
    def windows(self) -> Windows:
        return Windows(self.minutes * 60)

    def series(self, label: str, what: str) -> list[tuple[float, float]]:
        """(seconds, value) of one process's `what` (rss_mb, fds, threads)."""
        return [
            (s.at, float(getattr(s.processes[label], what)))
            for s in self.samples
            if label in s.processes
        ]

    def labels(self) -> list[str]:
        return list(dict.fromkeys(label for s in self.samples for label in s.processes))

    def workers(self) -> list[str]:
        return [label for label in self.labels() if label.startswith(WORKER)]

    def restarted(self) -> list[str]:
        """Worker processes that were not there from the first sample to the last."""
        if not self.samples:
            return []
        first, last = self.samples[0].processes, self.samples[-1].processes
        return [w for w in self.workers() if w not in first or w not in last]

    def connection_series(self, what: str) -> list[tuple[float, float]]:
        return [(s.at, float(s.connections.get(what, 0))) for s in self.samples]

    def connection_kinds(self) -> list[str]:
        return list(dict.fromkeys(kind for s in self.samples for kind in s.connections))

    @property
    def complete(self) -> bool:
        m = self.measured
        return m.answered == m.published and not m.failed

    @property
    def p99s(self) -> tuple[float, float]:
        return p99_first_last(self.measured.samples, self.windows)

    @property
    def p99_change(self) -> float:
        first, last = self.p99s
        return last / first - 1 if first else math.nan


class Watcher:
    """Samples the worker's process tree and the services every SAMPLE_SECONDS in a thread
    of its own, from its creation until `close`."""

    def __init__(self, worker_pid: int, setup: Setup) -> None:
        self._root = worker_pid
        self._database = setup.services.database_url.rsplit("/", 1)[1]
        self._services = _service_pids(setup.admin.url)
        # The sandbox stands in for Stripe: the workers' HTTP keep-alive connections to it.
        self._ports = {
            **SERVICE_PORTS,
            urlsplit(setup.admin.url).port or 80: "stripe (the sandbox)",
        }
        self._postgres = psycopg.connect(POSTGRES, autocommit=True)
        self._started = time.monotonic()
        self.samples: list[Sample] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            self.samples.append(self._sample())
            if self._stop.wait(SAMPLE_SECONDS):
                return

    def _sample(self) -> Sample:
        at = time.monotonic() - self._started
        children = descendants(self._root)
        workers = [self._root, *children]
        processes = {
            _label(pid, supervisor=bool(children) and pid == self._root): figures
            for pid in workers
            if (figures := stat(pid)) is not None
        }
        for name, pid in self._services.items():
            if (figures := stat(pid)) is not None:
                processes[name] = figures
        counted: Counter[str] = connections(workers, self._ports)
        backends = self._backends()
        counted["postgresql (server)"] = len(backends)
        rss = sum(figures.rss_mb for pid in backends if (figures := stat(pid)) is not None)
        return Sample(at, processes, dict(counted), rss)

    def _backends(self) -> list[int]:
        rows = self._postgres.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = %s", (self._database,)
        ).fetchall()
        return [int(row[0]) for row in rows]

    def close(self) -> list[Sample]:
        self._stop.set()
        self._thread.join(timeout=30)
        self._postgres.close()
        return self.samples


def _label(pid: int, *, supervisor: bool) -> str:
    """`run --processes N` (N > 1) is a supervisor of N worker processes."""
    return f"{WORKER} {'supervisor' if supervisor else 'process'} {pid}"


def _service_pids(sandbox_url: str) -> dict[str, int]:
    """The sandbox of this run (by its port) and RabbitMQ's beam.smp, from /proc."""
    port = sandbox_url.rsplit(":", 1)[1]
    found: dict[str, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv]
        if "worker.sandbox" in words and port in words:
            found["sandbox"] = int(proc.name)
        elif words and words[0].endswith("beam.smp"):
            found.setdefault("rabbitmq", int(proc.name))
    return found


def soak(setup: Setup, minutes: float, rate: float) -> Soak:
    """Our worker offered `rate` debits/s on the full budget for `minutes`, sampled meanwhile."""
    setup.admin.set_faults(STRIPE_LIKE)
    env = product_env(setup, rate=FULL_BUDGET, redis=True)
    # The sandbox's state lists every payment: after a long soak that takes a while.
    admin = SandboxAdmin(setup.admin.url, timeout=300)
    with product_worker(setup, env) as rss:
        timeline = load.Timeline()
        listener = load.EventListener(setup.services.vhost, timeline, load.bind_events)
        publisher = load.ConfirmedPublisher(setup.services.vhost)
        before = _counts(admin)
        watcher = Watcher(rss.pid, setup)
        try:
            load.steady(rate, minutes * 60, publisher, timeline, "soak")
        finally:
            samples = watcher.close()
        try:
            publisher.close()
            load.wait_for(timeline, len(timeline.published), 60)
        finally:
            listener.close()
            publisher.abandon()
        after = _counts(admin)
    answers = timeline.answered.values()
    measured = Measured(
        name="soak",
        published=len(timeline.published),
        answered=len(timeline.answered),
        seconds=max(answers) - min(answers) if len(answers) > 1 else math.nan,
        samples=timeline.samples(),
        stripe_requests=after[0] - before[0],
        rate_limited=after[1] - before[1],
        rss_main_mb=rss.main,
        rss_tree_mb=rss.tree,
        per_second=_per_second(timeline),
        failed=dict(Counter(timeline.failed.values())),
    )
    by_minute = stages_by_minute(stage_spans(setup.services.database_url, timeline))
    return Soak(minutes, rate, measured, samples, stages_by_minute=by_minute)


def stages_by_minute(spans: Sequence[tuple[float, dict[str, float]]]) -> list[dict[str, float]]:
    """Each minute's p99 of every stage, minutes counted from the first command published."""
    if not spans:
        return []
    start = min(published for published, _ in spans)
    minutes: dict[int, list[dict[str, float]]] = {}
    for published, stages in spans:
        minutes.setdefault(int((published - start) // 60), []).append(stages)
    return [
        {
            name: load.percentile([s[name] for s in minutes.get(minute, [])], 0.99)
            if minutes.get(minute)
            else math.nan
            for name, _, _ in STAGES
        }
        for minute in range(max(minutes) + 1)
    ]
