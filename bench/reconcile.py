"""What closing the books costs: the daily proof of a generated day (`reconcile-day`), and
debit throughput with and without a proof reading Stripe's charges at the same time
(`reconcile-cost`). The proof runs as an operator runs it, `debit-worker reconcile --day D`
in a process of its own, on the workers' Redis budget (its list reads take spare tokens)."""

from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from types import TracebackType
from typing import Any, Final

from bench import phases
from bench.day_seed import seed
from bench.phases import Measured, Setup
from bench.services import ACCOUNTS, VENV_BIN, stop
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.sandbox.admin_client import SandboxAdmin
from worker.sandbox.bulk import BulkDay
from worker.sandbox.faults import Faults

# The proof alone: Stripe's live limiter, no latency, so the figures are our side's cost (at
# Stripe's latency the pages, read one after another, take a round trip each on top).
PROOF_FAULTS: Final = Faults(rate_limit_rps=100)
LIST_ROUTE: Final = "GET /v1/charges"
# The day proved while debits run: never read to its end during a run (spare tokens only,
# about 3/s at 97 % of the budget), so its ledger side is not seeded.
COST_DAY_DEBITS: Final = 1_000_000
PROOF_TIMEOUT: Final = 3600.0
# Days far from yesterday, which every worker's own schedule proves.
DAY_AGO, COST_DAY_AGO = 30, 31


@dataclass(frozen=True)
class DayProofMeasured:
    debits: int  # generated at the sandbox and seeded in the ledger
    seed_seconds: float
    seconds: float  # the reconcile process, start to exit
    proof_seconds: float  # the run's own started_at → finished_at in the ledger
    status: str  # the run's: "clean" | "differences"
    stripe_charges: int
    ledger_debits: int
    matched: int
    unexplained: int
    list_requests: int  # as the proof counted them
    sandbox_list_requests: int  # GET /v1/charges as the sandbox counted them
    rate_limited: int  # 429s from the sandbox's limiter meanwhile
    rss_peak_mb: float  # the reconcile process's peak resident memory

    @property
    def debits_per_list_request(self) -> float:
        return self.stripe_charges / self.list_requests if self.list_requests else float("nan")


@dataclass(frozen=True)
class ReconcileCost:
    alone: Measured
    during: Measured  # the same load while a proof read Stripe's charges
    list_requests: int  # GET /v1/charges while `during` was measured
    proof_throughout: bool  # the proof was still reading when `during` was measured

    @property
    def drop(self) -> float:
        """The share of debit throughput lost while the proof ran."""
        if not self.alone.throughput:
            return float("nan")
        return 1 - self.during.throughput / self.alone.throughput


def days_ago(days: int) -> date:
    return datetime.now(UTC).date() - timedelta(days=days)


def generate(admin: SandboxAdmin, spec: BulkDay) -> None:
    admin.generate_day(
        spec.day,
        spec.count,
        spec.accounts,
        amount=spec.amount,
        currency=spec.currency,
        prefix=spec.prefix,
    )


def a_day(day: date, count: int, prefix: str) -> BulkDay:
    return BulkDay(day=day, count=count, accounts=ACCOUNTS, amount=1, currency="usd", prefix=prefix)


def reconcile_day(setup: Setup, count: int) -> DayProofMeasured:
    """A day of `count` debits at the sandbox and in the ledger, proved by `debit-worker
    reconcile --day D --json`."""
    setup.admin.set_faults(PROOF_FAULTS)
    spec = a_day(days_ago(DAY_AGO), count, "rday")
    generate(setup.admin, spec)
    began = time.monotonic()
    seed(setup.services.database_url, spec)
    seed_seconds = time.monotonic() - began
    before = _list_counts(setup.admin)
    out, log = setup.logs / "reconcile-day.json", setup.logs / "reconcile-day.log"
    began = time.monotonic()
    process = reconcile_process(setup, spec.day, out, log)
    code, rss_mb = wait_with_peak_rss(process, PROOF_TIMEOUT)
    seconds = time.monotonic() - began
    after = _list_counts(setup.admin)
    if code not in {0, 1}:  # 1: it ran, and found unexplained differences
        raise RuntimeError(f"debit-worker reconcile exited {code}; see {log}")
    found: dict[str, Any] = json.loads(out.read_text().splitlines()[-1])
    return DayProofMeasured(
        debits=count,
        seed_seconds=seed_seconds,
        seconds=seconds,
        proof_seconds=_run_seconds(setup.services.database_url, int(found["run_id"])),
        status=str(found["status"]),
        stripe_charges=int(found["stripe_charges"]),
        ledger_debits=int(found["ledger_debits"]),
        matched=int(found["matched"]),
        unexplained=int(found["unexplained"]),
        list_requests=int(found["list_requests"]),
        sandbox_list_requests=after[0] - before[0],
        rate_limited=after[1] - before[1],
        rss_peak_mb=rss_mb,
    )


def reconcile_cost(setup: Setup, rate: float, duration: float) -> ReconcileCost:
    """The "ours" load twice: alone, then while a proof of a large day reads Stripe's
    charges on the same budget."""
    spec = a_day(days_ago(COST_DAY_AGO), COST_DAY_DEBITS, "rcost")
    generate(setup.admin, spec)
    alone = phases.ours_at_stripe_rate(
        setup, rate, duration, name="ours, alone", prefix="cost-alone"
    )
    proof = ProofAlongside(setup, spec.day)
    during = phases.ours_at_stripe_rate(
        setup, rate, duration, name="ours, proof running", prefix="cost-proof", alongside=proof
    )
    return ReconcileCost(alone, during, proof.list_requests, proof.throughout)


class ProofAlongside:
    """`debit-worker reconcile --day D` started on entry (the load starts once it has made
    its first list request) and stopped on exit, whether or not it has finished."""

    def __init__(self, setup: Setup, day: date) -> None:
        self._setup = setup
        self._day = day
        self._process: subprocess.Popen[bytes] | None = None
        self._from = 0
        self.list_requests = 0
        self.throughout = False

    def __enter__(self) -> ProofAlongside:
        admin, logs = self._setup.admin, self._setup.logs
        before = _list_counts(admin)[0]
        process = reconcile_process(
            self._setup, self._day, logs / "reconcile-cost.json", logs / "reconcile-cost.log"
        )
        self._process = process
        try:
            _first_list_request(admin, process, before, logs / "reconcile-cost.log")
        except BaseException:
            stop(process, grace=5)
            raise
        self._from = _list_counts(admin)[0]
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        trace: TracebackType | None,
    ) -> None:
        assert self._process is not None
        self.list_requests = _list_counts(self._setup.admin)[0] - self._from
        self.throughout = self._process.poll() is None
        stop(self._process, grace=5)


def _first_list_request(
    admin: SandboxAdmin, process: subprocess.Popen[bytes], before: int, log: Path
) -> None:
    """Wait until the sandbox has answered a list request since `before` (the process's
    start-up imports the whole worker: seconds, on a busy host tens of them)."""
    deadline = time.monotonic() + 120
    while _list_counts(admin)[0] == before:
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the proof made no list request (exit {process.poll()}); see {log}")
        time.sleep(0.1)


def reconcile_process(setup: Setup, day: date, out: Path, log: Path) -> subprocess.Popen[bytes]:
    """The operator's command, with the workers' settings (sandbox, key, Redis budget)."""
    env = phases.product_env(setup, rate=100, redis=True)
    command = [str(VENV_BIN / "debit-worker"), "reconcile", "--day", day.isoformat(), "--json"]
    with out.open("wb") as stdout, log.open("ab") as stderr:
        return subprocess.Popen(
            command,
            env={**os.environ, **env},
            stdout=stdout,
            stderr=stderr,
            start_new_session=True,
        )


def wait_with_peak_rss(process: subprocess.Popen[bytes], timeout: float) -> tuple[int, float]:
    """Wait for `process` to exit: its exit code and peak resident memory in MiB, from the
    kernel's account of it (wait4's ru_maxrss, KiB on Linux): exact, where sampling /proc
    could miss a peak just before the exit."""
    deadline = time.monotonic() + timeout
    while True:
        pid, status, usage = os.wait4(process.pid, os.WNOHANG)
        if pid:
            process.returncode = os.waitstatus_to_exitcode(status)
            return process.returncode, usage.ru_maxrss / 1024
        if time.monotonic() > deadline:
            stop(process, grace=5)
            raise RuntimeError(f"debit-worker reconcile still running after {timeout:.0f} s")
        time.sleep(0.1)


def _list_counts(admin: SandboxAdmin) -> tuple[int, int]:
    """(list requests for charges, 429s of the limiter) the sandbox has answered so far."""
    counts = admin.counts()
    return counts.requests.get(LIST_ROUTE, 0), counts.faults_injected.get("rate_limit_bucket", 0)


def _run_seconds(database_url: str, run_id: int) -> float:
    engine = make_engine(database_url, pool_size=1)
    try:
        run = Ledger.on(engine).reconciliation.run(run_id)
    finally:
        engine.dispose()
    if run is None or run.finished_at is None:
        raise RuntimeError(f"reconciliation run {run_id} is not recorded as finished")
    return (run.finished_at - run.started_at).total_seconds()
