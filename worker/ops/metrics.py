"""The worker's Prometheus metrics: what each process records, and how they are served.

Every metric is named here (docs/operations.md "Metrics" describes each). Worker code calls
the functions below, never prometheus-client itself, so that the metrics stay one catalogue
and recording stays one counter or histogram write per call.

Several processes (`run --processes N`): each child records into files of its own in
PROMETHEUS_MULTIPROC_DIR (prometheus-client's multiprocess mode, chosen when the module is
imported), and the supervisor serves their sum (`serving_registry`). Gauges say how they
combine: `livesum` (added up over the processes alive) or `liveall` (one series per process,
labelled `pid`: readiness reads them per process). What the ledger knows (outbox lag,
requests awaiting reconciliation, dead letters pending) is not recorded by anyone: the
serving process reads it from the ledger at each scrape (`LEDGER_GAUGES`,
worker/ops/probe_endpoints.py).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Final

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from worker.adapters.rate_budget import KNOWN_REASONS

# No `_created` series: they would differ between one process and several (multiprocess
# mode has none), and rate() needs none.
disable_created_metrics()  # type: ignore[no-untyped-call]

DEBITS = Counter(
    "debit_worker_debits",
    "Outcomes recorded by debit attempts, by outcome (succeeded, failed, reemitted) and "
    "failure code.",
    ["outcome", "code"],
)
ATTEMPTS = Counter(
    "debit_worker_attempts", "Debit attempts started, by attempt number (1: first).", ["number"]
)
IN_FLIGHT = Gauge(
    "debit_worker_debits_in_flight",
    "Debit attempts running now.",
    multiprocess_mode="livesum",
)
STRIPE_SECONDS = Histogram(
    "debit_worker_stripe_request_duration_seconds",
    "Stripe API calls (with the SDK's own retries), by endpoint and final HTTP status.",
    ["endpoint", "status"],
    buckets=(0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 60.0),
)
STRIPE_RATE_LIMITED = Counter(
    "debit_worker_stripe_rate_limited",
    "Stripe API calls answered 429 (rate limited), by endpoint and the limit Stripe named "
    "(Stripe-Rate-Limited-Reason; none: no header).",
    ["endpoint", "reason"],
)

BUDGET_WAIT = Histogram(
    "debit_worker_rate_budget_wait_seconds",
    "Time each Stripe call waited for the rate budget, by priority (debits, spare).",
    ["priority"],
    buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUDGET_REDIS_UNREACHABLE = Counter(
    "debit_worker_rate_budget_redis_unreachable",
    "Times the shared rate budget found Redis unreachable and fell back to a local budget.",
)
DEAD_LETTERS = Counter(
    "debit_worker_dead_letters",
    "Messages dead-lettered by the worker, by stage (intake, task).",
    ["stage"],
)
INTAKE_PAUSES = Counter(
    "debit_worker_intake_pauses",
    "Times the intake stopped taking commands because commands had to be given back.",
)
INTAKE_PAUSED = Gauge(
    "debit_worker_intake_paused",
    "1 while the intake of a worker process is paused (commands being given back).",
    multiprocess_mode="liveall",
)
INTAKE_CONSUMING = Gauge(
    "debit_worker_intake_consuming",
    "1 while the intake of a worker process is consuming commands from the broker.",
    multiprocess_mode="liveall",
)
STRIPE_KEY_ACCEPTED = Gauge(
    "debit_worker_stripe_key_accepted",
    "1 once Stripe answered the worker process's platform read (or none is needed: "
    "DEBIT_WORKER_PLATFORM_COUNTRY is set); 0 before, or after Stripe refused the key.",
    multiprocess_mode="liveall",
)
EVENTS_LEFT_TO_RELAY = Counter(
    "debit_worker_event_pump_left_to_relay",
    "Events the event pump did not publish and left in the outbox for the relay.",
)
SETTLEMENTS = Counter(
    "debit_worker_reconciler_settlements",
    "Requests the reconciler settled, by method (stripe_records, resent) and outcome.",
    ["method", "outcome"],
)
AMBIGUOUS = Counter(
    "debit_worker_reconciler_ambiguous",
    "Reconciler verdicts that a person must settle (Stripe's records are ambiguous).",
)

# Read from the ledger by the serving process at each scrape: name → help.
LEDGER_UP: Final = "debit_worker_ledger_up"
LEDGER_GAUGES: Final[Mapping[str, str]] = {
    LEDGER_UP: "1 if the ledger answered this scrape's queries, else 0 (and no ledger gauges).",
    "debit_worker_outbox_unsent_events": "Events recorded in the outbox and not yet published.",
    "debit_worker_outbox_lag_seconds": "Age of the oldest unpublished event (0: none).",
    "debit_worker_needs_reconciliation_requests": "Requests in needs_reconciliation.",
    "debit_worker_needs_reconciliation_oldest_age_seconds": "Seconds since the oldest "
    "request in needs_reconciliation last changed (its escalation or resend); 0: none.",
    "debit_worker_dead_letters_pending": "Dead letters kept in the ledger that no operator "
    "has replayed or discarded yet.",
}

_SUCCEEDED = DEBITS.labels("succeeded", "")
_REEMITTED = DEBITS.labels("reemitted", "")
_DEBIT_WAITS = BUDGET_WAIT.labels("debits")
_SPARE_WAITS = BUDGET_WAIT.labels("spare")


def debit_outcome(code: str | None) -> None:
    """An attempt recorded the request's outcome: succeeded (None) or failed with `code`."""
    if code is None:
        _SUCCEEDED.inc()
    else:
        DEBITS.labels("failed", str(code)).inc()


def debit_reemitted() -> None:
    """A finished request was seen again and its recorded event sent again."""
    _REEMITTED.inc()


@contextmanager
def attempt(number: int) -> Iterator[None]:
    """One debit attempt, counted by its number and in flight until it ends."""
    ATTEMPTS.labels(str(number)).inc()
    IN_FLIGHT.inc()
    try:
        yield
    finally:
        IN_FLIGHT.dec()


def stripe_answered(
    endpoint: str, status: int | None, seconds: float, *, rate_limited_by: str | None = None
) -> None:
    """A Stripe call ended: its HTTP status (None: no answer) after `seconds`; a 429 with
    the reason Stripe gave (its Stripe-Rate-Limited-Reason header, if any)."""
    STRIPE_SECONDS.labels(endpoint, "no_answer" if status is None else str(status)).observe(seconds)
    if status == 429:
        reason = rate_limited_by or "none"
        STRIPE_RATE_LIMITED.labels(
            # Reasons Stripe is not known to give count as `other`: the labels stay bounded.
            endpoint,
            reason if reason in KNOWN_REASONS | {"none"} else "other",
        ).inc()


def rate_budget_waited(seconds: float, *, spare: bool) -> None:
    (_SPARE_WAITS if spare else _DEBIT_WAITS).observe(seconds)


def rate_budget_redis_unreachable() -> None:
    BUDGET_REDIS_UNREACHABLE.inc()


def dead_lettered(stage: str) -> None:
    DEAD_LETTERS.labels(stage).inc()


def intake_consuming(consuming: bool) -> None:
    INTAKE_CONSUMING.set(1 if consuming else 0)


def intake_paused(paused: bool) -> None:
    """The intake paused (counted) or took commands again."""
    if paused:
        INTAKE_PAUSES.inc()
    INTAKE_PAUSED.set(1 if paused else 0)


def stripe_key_accepted(accepted: bool) -> None:
    STRIPE_KEY_ACCEPTED.set(1 if accepted else 0)


def events_left_to_relay(count: int) -> None:
    if count > 0:
        EVENTS_LEFT_TO_RELAY.inc(count)


def reconciler_settled(method: str, outcome: str) -> None:
    SETTLEMENTS.labels(method, outcome).inc()


def reconciler_ambiguous() -> None:
    AMBIGUOUS.inc()


# --- serving -------------------------------------------------------------------------------

RECORDED: Final = (
    DEBITS,
    ATTEMPTS,
    IN_FLIGHT,
    STRIPE_SECONDS,
    STRIPE_RATE_LIMITED,
    BUDGET_WAIT,
    BUDGET_REDIS_UNREACHABLE,
    DEAD_LETTERS,
    INTAKE_PAUSES,
    INTAKE_PAUSED,
    INTAKE_CONSUMING,
    STRIPE_KEY_ACCEPTED,
    EVENTS_LEFT_TO_RELAY,
    SETTLEMENTS,
    AMBIGUOUS,
)


def exposed_names() -> frozenset[str]:
    """Every sample name the endpoint may show (counters end in _total, histograms in
    _bucket, _sum and _count): what alert rules and dashboards may refer to."""
    names = set(LEDGER_GAUGES)
    for family in (family for metric in RECORDED for family in metric.describe()):
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{suffix}" for suffix in ("bucket", "sum", "count"))
        else:
            names.add(family.name)
    return frozenset(names)


def serving_registry(directory: str | None, *extra: Collector) -> CollectorRegistry:
    """What the serving process shows: the sum of every process's files in `directory`
    (multiprocess mode), else this process's own metrics; and `extra` collectors."""
    registry = CollectorRegistry()
    if directory:
        MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    else:
        registry.register(_Delegate(REGISTRY))
    for collector in extra:
        registry.register(collector)
    return registry


class _Delegate(Collector):
    """Another registry's metrics, as one collector (no names claimed)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry

    def collect(self) -> Iterable[Metric]:
        return self._registry.collect()


# The `liveall` gauges readiness reads, per process: name → what it says.
STATE_GAUGES: Final[Mapping[str, str]] = {
    family.name: field
    for gauge, field in (
        (INTAKE_CONSUMING, "consuming"),
        (INTAKE_PAUSED, "paused"),
        (STRIPE_KEY_ACCEPTED, "stripe_key_accepted"),
    )
    for family in gauge.describe()
}
