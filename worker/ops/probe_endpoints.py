"""What `/metrics` and `/readyz` serve (worker/ops/health.py serves them).

The serving process reads what only the ledger knows at each scrape, on a connection of its
own (so a probe never takes a worker thread's): the events not yet published and the age of
the oldest, the requests awaiting reconciliation and the age of the oldest, and the dead
letters pending. Readiness asks the ledger `SELECT 1` on the same connection, at most every
two seconds.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, func, make_url, select, text

from worker.adapters.ledger import utc_now
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE, make_engine
from worker.adapters.ledger.tables import Status, dead_letters, debit_requests, outbox
from worker.ops.health import LEDGER_CACHE_SECONDS, Cached, Check, ProcessState, Report, judge
from worker.ops.metrics import LEDGER_GAUGES, LEDGER_UP, STATE_GAUGES, serving_registry
from worker.settings import Settings, load_settings

log = logging.getLogger(__name__)

# A probe or a scrape must answer quickly even when the database does not.
PROBE_TIMEOUT_MS: Final = 2_000


def probe_engine(database_url: str) -> Engine:
    """One connection, with short connect and statement timeouts."""
    url = make_url(database_url)
    if url.get_backend_name() == "postgresql" and "connect_timeout" not in url.query:
        url = url.update_query_dict({"connect_timeout": str(PROBE_TIMEOUT_MS // 1000)})
    return make_engine(
        url.render_as_string(hide_password=False),
        pool_size=1,
        max_connections=1,
        pre_ping=False,  # a dead connection fails its probe; the next one reconnects
        statement_timeout_ms=PROBE_TIMEOUT_MS,
        lock_timeout_ms=PROBE_TIMEOUT_MS,
    )


class LedgerGauges(Collector):
    """The ledger's gauges (metrics.LEDGER_GAUGES), read at each collection."""

    def __init__(self, engine: Engine, clock: Callable[[], datetime] = utc_now) -> None:
        self._engine = engine
        self._clock = clock
        self._was_up = True

    def collect(self) -> Iterator[Metric]:
        requests, events = debit_requests.c, outbox.c
        try:
            with self._engine.connect() as conn:
                waiting, oldest_waiting = conn.execute(
                    select(func.count(), func.min(requests.updated_at)).where(
                        requests.status == str(Status.NEEDS_RECONCILIATION)
                    )
                ).one()
                unsent, oldest_unsent = conn.execute(
                    select(func.count(), func.min(events.created_at)).where(
                        events.sent_at.is_(None)
                    )
                ).one()
                pending_dead_letters = conn.execute(
                    select(func.count()).where(dead_letters.c.state == "pending")
                ).scalar_one()
        except LEDGER_UNAVAILABLE as exc:
            if self._was_up:
                log.warning("metrics: the ledger does not answer (%s); no ledger gauges", exc)
            self._was_up = False
            yield _gauge(LEDGER_UP, 0)
            return
        self._was_up = True
        now = self._clock()
        yield _gauge(LEDGER_UP, 1)
        yield _gauge("debit_worker_outbox_unsent_events", unsent)
        yield _gauge("debit_worker_outbox_lag_seconds", _age(oldest_unsent, now))
        yield _gauge("debit_worker_needs_reconciliation_requests", waiting)
        yield _gauge(
            "debit_worker_needs_reconciliation_oldest_age_seconds", _age(oldest_waiting, now)
        )
        yield _gauge("debit_worker_dead_letters_pending", pending_dead_letters)


def _gauge(name: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, LEDGER_GAUGES[name], value=value)


def _age(oldest: datetime | None, now: datetime) -> float:
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


class LedgerProbe:
    """Whether the ledger answers `SELECT 1`, asked at most every `cache_seconds`."""

    def __init__(self, engine: Engine, *, cache_seconds: float = LEDGER_CACHE_SECONDS) -> None:
        self._engine = engine
        self._answer = Cached(self._ask, cache_seconds)

    def check(self) -> Check:
        return self._answer.get()

    def _ask(self) -> Check:
        try:
            with self._engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except LEDGER_UNAVAILABLE as exc:
            log.warning("readiness: the ledger does not answer SELECT 1: %s", exc)
            # The exception's class only: its text may name hosts and users.
            return Check(False, f"the ledger does not answer SELECT 1 ({type(exc).__name__})")
        return Check(True, "the ledger answers SELECT 1")


def process_states(registry: CollectorRegistry) -> dict[str, ProcessState]:
    """Each worker process's state by pid, from its `liveall` gauges (in a single process
    they carry no pid label: they are this process's)."""
    found: dict[str, dict[str, bool]] = {}
    for metric in registry.collect():
        field = STATE_GAUGES.get(metric.name)
        if field is None:
            continue
        for sample in metric.samples:
            pid = sample.labels.get("pid", str(os.getpid()))
            found.setdefault(pid, {})[field] = sample.value == 1
    return {pid: ProcessState(**fields) for pid, fields in found.items()}


@dataclass(frozen=True)
class ServedEndpoints:
    scraped: CollectorRegistry  # the processes' metrics and the ledger's gauges
    reported: CollectorRegistry  # the processes' metrics only: what readiness reads
    ledger: LedgerProbe
    live_pids: Callable[[], Sequence[str]]
    processes: int

    def metrics(self) -> tuple[bytes, str]:
        return generate_latest(self.scraped), CONTENT_TYPE_LATEST

    def readiness(self) -> Report:
        return judge(
            process_states(self.reported), self.live_pids(), self.processes, self.ledger.check()
        )


def endpoints(
    database_url: str,
    directory: str | None,
    live_pids: Callable[[], Sequence[str]],
    processes: int,
) -> ServedEndpoints:
    engine = probe_engine(database_url)
    return ServedEndpoints(
        scraped=serving_registry(directory, LedgerGauges(engine)),
        reported=serving_registry(directory),
        ledger=LedgerProbe(engine),
        live_pids=live_pids,
        processes=processes,
    )


def in_process(settings: Settings) -> ServedEndpoints:
    """A worker process serving itself (`run` with one process)."""
    return endpoints(
        settings.database_url,
        os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None,
        lambda: [str(os.getpid())],
        1,
    )


def for_supervisor(
    directory: str, live_pids: Callable[[], Sequence[str]], processes: int
) -> ServedEndpoints:
    """The supervisor of `run --processes N`, serving its worker processes' files in
    `directory`, with the settings they run with."""
    return endpoints(load_settings().database_url, directory, live_pids, processes)
