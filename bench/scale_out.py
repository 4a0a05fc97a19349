"""Several hosts on one budget (`scale-out`): N deployments, each a `debit-worker run
--processes P` with a host name of its own (DEBIT_WORKER_HOST_NAME), standing in for hosts,
against one vhost, one ledger and one Redis budget, offered the budget's full rate. Measured
twice on the same deployments: undisturbed, then with one deployment SIGKILLed (every
process of it at once) at mid-run and restarted a few seconds later.

Who answered what is read from the ledger's audit entries, whose actor is the lease owner
(`host:pid:task`); whether any request was paid twice, from the sandbox's own payments (each
names its request in its metadata)."""

from __future__ import annotations

import math
import subprocess
import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

from sqlalchemy import select

from bench import load
from bench.phases import (
    STRIPE_LIKE,
    Measured,
    RssSampler,
    Setup,
    _measure,
    _wait_for_consumers,
    _wait_for_exchange,
    product_env,
)
from bench.procfs import kill_tree
from bench.services import VENV_BIN, free_port, start, stop
from schemas.topology import COMMAND_QUEUE
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.tables import audit_log
from worker.sandbox.admin_client import SandboxAdmin
from worker.settings import Settings
from worker.transport.topology import TASK_QUEUE

# The offered load and the budget: the sandbox limiter's rate, all of it.
FULL_BUDGET: Final = STRIPE_LIKE.rate_limit_rps or 100.0
DOWN_SECONDS: Final = 5.0  # from the kill to the restart
SHARE_SPREAD: Final = 0.10  # largest deployment's answers ÷ smallest's, less 1, at most
KILL_DROP: Final = 0.05  # throughput lost to a deployment's kill and restart, at most
OUTCOMES: Final = ("succeeded", "failed")  # audit actions naming who recorded the outcome
ATTEMPTS: Final = ("attempting", "attempt")  # one per Stripe attempt
STEADY_PREFIX, KILLED_PREFIX = "fleet", "fleetkill"


def host_name(number: int) -> str:
    return f"bench-host-{number}"


@dataclass(frozen=True)
class Entry:
    """One audit entry of a request: what, by whom (`host:pid:task`), when (epoch s)."""

    request_id: str
    action: str
    actor: str
    at: float

    @property
    def host(self) -> str:
        return self.actor.split(":", 1)[0]

    @property
    def pid(self) -> int | None:
        parts = self.actor.split(":")
        return int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None


@dataclass(frozen=True)
class ScaleRun:
    measured: Measured
    answered_by: dict[str, int]  # host → outcomes its processes recorded (others: "other")
    attempts_by: dict[str, int]  # host → Stripe attempts its processes made
    payments: dict[int, int]  # payments at the sandbox per request → requests
    budget: float = FULL_BUDGET

    @property
    def budget_used(self) -> float:
        """Stripe requests per second (first event → last) ÷ the budget."""
        m = self.measured
        return m.stripe_requests / m.seconds / self.budget if m.seconds else float("nan")

    @property
    def load_throughput(self) -> float:
        """Events per second while the load ran (stragglers after it are not throughput)."""
        series = self.measured.per_second
        return sum(series) / len(series) if series else float("nan")

    @property
    def spread(self) -> float:
        return spread([n for host, n in self.answered_by.items() if host != "other"])

    @property
    def exactly_once(self) -> bool:
        """Every published request has exactly one payment at the sandbox."""
        return set(self.payments) == {1} and self.payments[1] == self.measured.published


@dataclass(frozen=True)
class Recovery:
    host: str  # the deployment killed
    killed_at: float  # seconds after the first publish
    down_seconds: float  # kill → restart
    consuming_after: float  # kill → every process of the fleet consuming again (nan: never)
    unfinished: int  # published before the kill and not answered by then
    held: int  # of which the killed deployment had claimed (an audit entry of it before)
    unanswered: int  # of the unfinished, never answered
    all_answered_after: float  # kill → the last unfinished answered
    held_answered_after: float  # kill → the last of those it held answered
    finished_by: dict[str, int] = field(default_factory=dict)  # the held ones: by whom


@dataclass(frozen=True)
class ScaleOut:
    deployments: int
    processes: int  # per deployment
    threads: int  # per process
    duration: float
    steady: ScaleRun
    killed: ScaleRun
    recovery: Recovery

    @property
    def ok(self) -> bool:
        """Both runs answered every debit, successfully, and paid each exactly once."""
        return all(
            r.measured.answered == r.measured.published and not r.measured.failed and r.exactly_once
            for r in (self.steady, self.killed)
        )

    @property
    def drop(self) -> float:
        """The share of throughput (while the load ran) lost to the kill and restart."""
        before = self.steady.load_throughput
        return 1 - self.killed.load_throughput / before if before else float("nan")


def spread(counts: Sequence[int]) -> float:
    """How unevenly the work was shared: largest ÷ smallest, less 1 (0: evenly; inf: one did
    nothing; nan: nobody to compare)."""
    if len(counts) < 2:
        return float("nan")
    smallest = min(counts)
    return max(counts) / smallest - 1 if smallest else math.inf


def by_host(
    entries: Iterable[Entry], actions: Sequence[str], hosts: Sequence[str]
) -> dict[str, int]:
    """Entries of `actions` per host of the fleet; anyone else (the reconciler) as "other"."""
    counted = Counter(
        e.host if e.host in hosts else "other" for e in entries if e.action in actions
    )
    return {host: counted.get(host, 0) for host in hosts} | (
        {"other": counted["other"]} if counted["other"] else {}
    )


def payments_per_request(payments: Iterable[Mapping[str, Any]], prefix: str) -> dict[int, int]:
    """How many requests (of those whose id starts with `prefix-`) have 0, 1, 2 … payments;
    `published` requests with none are counted by the caller."""
    paid = Counter(
        str(p.get("metadata", {}).get("request_id", ""))
        for p in payments
        if str(p.get("metadata", {}).get("request_id", "")).startswith(f"{prefix}-")
    )
    return dict(Counter(paid.values()))


@dataclass
class Kill:
    """What the kill and restart did, in epoch seconds."""

    pids: frozenset[int] = frozenset()
    at: float = math.nan
    restarted_at: float = math.nan
    consuming_at: float = math.nan


def recovery(timeline: load.Timeline, entries: Sequence[Entry], host: str, kill: Kill) -> Recovery:
    """What became of the requests unfinished when `host` was killed: who finished those it
    had claimed, and when the last of them was answered."""
    unfinished = {
        r
        for r, at in timeline.published.items()
        if at < kill.at and timeline.answered.get(r, math.inf) > kill.at
    }
    held = {
        e.request_id
        for e in entries
        if e.request_id in unfinished and e.at < kill.at and e.host == host
    }
    finished_by: Counter[str] = Counter()
    for e in entries:
        if e.request_id in held and e.action in OUTCOMES:
            restarted = e.host == host and e.pid not in kill.pids
            finished_by[f"{e.host} (restarted)" if restarted else e.host] += 1

    def last_answer(ids: set[str]) -> float:
        times = [timeline.answered[r] for r in ids if r in timeline.answered]
        return max(times) - kill.at if times else math.nan

    return Recovery(
        host=host,
        killed_at=kill.at - min(timeline.published.values(), default=kill.at),
        down_seconds=kill.restarted_at - kill.at,
        consuming_after=kill.consuming_at - kill.at,
        unfinished=len(unfinished),
        held=len(held),
        unanswered=sum(1 for r in unfinished if r not in timeline.answered),
        all_answered_after=last_answer(unfinished),
        held_answered_after=last_answer(held),
        finished_by=dict(finished_by),
    )


@dataclass
class Deployment:
    """One `debit-worker run --processes P`: a host of the fleet."""

    host: str
    env: dict[str, str]
    log: Path
    process: subprocess.Popen[bytes] | None = None
    rss: RssSampler | None = None

    def start(self) -> None:
        command = [str(VENV_BIN / "debit-worker"), "run", "--no-migrate"]
        self.process = start(command, self.env, self.log)
        self.rss = RssSampler(self.process.pid)

    def kill(self) -> frozenset[int]:
        """Every process of the deployment SIGKILLed at once; the pids killed."""
        assert self.process is not None
        assert self.rss is not None
        killed = kill_tree(self.process.pid)
        self.process.wait(timeout=10)
        self.rss.close()
        return killed

    def stop(self) -> None:
        if self.rss is not None:
            self.rss.close()
        if self.process is not None:
            stop(self.process)


@contextmanager
def fleet(setup: Setup, count: int, processes: int, threads: int) -> Iterator[list[Deployment]]:
    """`count` deployments on one vhost, ledger and Redis budget, each with its own host
    name and metrics port; yielded once every process of all of them consumes."""
    shared = product_env(setup, rate=FULL_BUDGET, redis=True)
    shared |= {
        "DEBIT_WORKER_PROCESSES": str(processes),
        "DEBIT_WORKER_CONCURRENCY": str(threads),
        # While Redis is away each process falls back to its share of the fleet's budget.
        "DEBIT_WORKER_RATE_BUDGET_PROCESSES": str(count * processes),
    }
    deployments = [
        Deployment(
            host_name(number),
            shared
            | {
                "DEBIT_WORKER_HOST_NAME": host_name(number),
                "DEBIT_WORKER_METRICS_PORT": str(free_port()),
            },
            setup.logs / f"{host_name(number)}.log",
        )
        for number in range(1, count + 1)
    ]
    try:
        for deployment in deployments:
            deployment.start()
        _wait_for_exchange(setup.services.vhost, "debits.events")
        for queue in (COMMAND_QUEUE, TASK_QUEUE):
            _wait_for_consumers(setup.services.vhost, queue, count * processes)
        yield deployments
    finally:
        for deployment in deployments:
            deployment.stop()


def _kill_and_restart(
    deployment: Deployment, after: float, vhost: str, consumers: int, kill: Kill
) -> None:
    time.sleep(after)
    kill.at = time.time()
    kill.pids = deployment.kill()
    time.sleep(DOWN_SECONDS)
    kill.restarted_at = time.time()
    deployment.start()
    try:
        _wait_for_consumers(vhost, COMMAND_QUEUE, consumers, timeout=120)
    except RuntimeError:
        return  # never back: consuming_at stays nan, and the report says so
    kill.consuming_at = time.time()


def _load(
    setup: Setup,
    deployments: list[Deployment],
    duration: float,
    prefix: str,
    name: str,
    settle: float,
    kill: Kill | None = None,
    consumers: int = 0,
) -> tuple[Measured, load.Timeline]:
    """The full budget's rate for `duration` s; with `kill`, the last deployment is killed
    at mid-run and restarted DOWN_SECONDS later."""
    vhost = setup.services.vhost
    timeline = load.Timeline()
    listener = load.EventListener(vhost, timeline, load.bind_events)
    publisher = load.ConfirmedPublisher(vhost)

    def run() -> None:
        with ThreadPoolExecutor(1) as pool:
            chaos = (
                pool.submit(
                    _kill_and_restart, deployments[-1], duration / 2, vhost, consumers, kill
                )
                if kill is not None
                else None
            )
            load.steady(FULL_BUDGET, duration, publisher, timeline, prefix)
            publisher.close()
            if chaos is not None:
                chaos.result()  # its failure is the run's

    first = deployments[0].rss
    assert first is not None
    try:
        measured = _measure(name, setup, timeline, run, first, settle)
    finally:
        listener.close()
        publisher.abandon()
    samplers = [d.rss for d in deployments if d.rss is not None]
    measured.rss_main_mb = max(s.main for s in samplers)
    measured.rss_tree_mb = sum(s.tree for s in samplers)
    return measured, timeline


def ledger_entries(database_url: str, prefix: str) -> list[Entry]:
    engine = make_engine(database_url, pool_size=1)
    a = audit_log.c
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                select(a.entity_id, a.action, a.actor, a.at).where(
                    a.entity == "request",
                    a.entity_id.like(f"{prefix}-%"),
                    a.action.in_([*OUTCOMES, *ATTEMPTS, "received"]),
                )
            ).all()
    finally:
        engine.dispose()
    return [Entry(r.entity_id, r.action, r.actor, r.at.timestamp()) for r in rows]


def _scale_run(
    measured: Measured, entries: list[Entry], hosts: Sequence[str], payments: dict[int, int]
) -> ScaleRun:
    unpaid = measured.published - sum(payments.values())
    return ScaleRun(
        measured,
        answered_by=by_host(entries, OUTCOMES, hosts),
        attempts_by=by_host(entries, ATTEMPTS, hosts),
        payments=payments | ({0: unpaid} if unpaid else {}),
    )


def scale_out(
    setup: Setup, deployments: int, processes: int, threads: int, duration: float
) -> ScaleOut:
    """The fleet at the full budget, undisturbed, then with its last deployment killed at
    mid-run and restarted DOWN_SECONDS later."""
    setup.admin.set_faults(STRIPE_LIKE)
    hosts = [host_name(n) for n in range(1, deployments + 1)]
    consumers = deployments * processes
    # Long enough for a dead deployment's leases to run out and their requests to be retried.
    lease = float(Settings.model_fields["claim_lease_seconds"].default)
    kill = Kill()
    with fleet(setup, deployments, processes, threads) as running:
        steady, _ = _load(setup, running, duration, STEADY_PREFIX, f"{deployments} deployments", 30)
        killed, timeline = _load(
            setup,
            running,
            duration,
            KILLED_PREFIX,
            f"{deployments} deployments, one killed",
            60 + 3 * lease,
            kill,
            consumers,
        )
    # The whole state lists every payment of the run so far: give it time.
    payments = SandboxAdmin(setup.admin.url, timeout=300).state().payments
    steady_entries = ledger_entries(setup.services.database_url, STEADY_PREFIX)
    killed_entries = ledger_entries(setup.services.database_url, KILLED_PREFIX)
    return ScaleOut(
        deployments,
        processes,
        threads,
        duration,
        _scale_run(steady, steady_entries, hosts, payments_per_request(payments, STEADY_PREFIX)),
        _scale_run(killed, killed_entries, hosts, payments_per_request(payments, KILLED_PREFIX)),
        recovery(timeline, killed_entries, hosts[-1], kill),
    )
