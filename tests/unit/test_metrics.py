"""The worker's metrics: what each recording call moves, the catalogue's names, the sum the
supervisor serves of several processes' files, the ledger's gauges, and the alert rules and
the dashboard, which may only name metrics the worker serves."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Final

import promql_parser
import pytest
import yaml
from prometheus_client import REGISTRY, CollectorRegistry

from schemas.commands import DebitRequested
from tests.unit.fakes import FakeClock, migrated_ledger
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.domain.types import OutboxEvent
from worker.ops import metrics
from worker.ops.health import ProcessState, forget_process
from worker.ops.probe_endpoints import LedgerGauges, process_states

ROOT: Final = Path(__file__).resolve().parents[2]
ALERTS: Final = ROOT / "ops" / "prometheus" / "alerts.yml"
DASHBOARD: Final = ROOT / "ops" / "grafana" / "debit-worker.json"
# Prometheus's own series, not the worker's.
PROMETHEUS_OWN: Final = frozenset({"up"})


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def moved(name: str, labels: dict[str, str], action: Callable[[], None]) -> float:
    before = sample(name, **labels)
    action()
    return sample(name, **labels) - before


# --- recording ---------------------------------------------------------------------------


def test_an_outcome_is_counted_by_outcome_and_failure_code() -> None:
    # Given / When a success, a refusal with a code and a re-emitted event are recorded
    succeeded = moved(
        "debit_worker_debits_total",
        {"outcome": "succeeded", "code": ""},
        lambda: metrics.debit_outcome(None),
    )
    refused = moved(
        "debit_worker_debits_total",
        {"outcome": "failed", "code": "consent_missing"},
        lambda: metrics.debit_outcome("consent_missing"),
    )
    again = moved(
        "debit_worker_debits_total", {"outcome": "reemitted", "code": ""}, metrics.debit_reemitted
    )
    # Then each moved its own series by one
    assert (succeeded, refused, again) == (1, 1, 1)


def test_an_attempt_is_counted_by_number_and_in_flight_until_it_ends() -> None:
    # Given the attempts counted so far and none in flight
    number = {"number": "3"}
    before = sample("debit_worker_attempts_total", **number)
    idle = sample("debit_worker_debits_in_flight")
    seen: list[float] = []

    def failing_attempt() -> None:
        with metrics.attempt(3):
            seen.append(sample("debit_worker_debits_in_flight"))
            raise RuntimeError("the attempt failed")

    # When a third attempt runs, and ends by raising
    with pytest.raises(RuntimeError):
        failing_attempt()
    # Then it was in flight while it ran, not after, and counted once as attempt 3
    assert (seen[0] - idle, sample("debit_worker_debits_in_flight") - idle) == (1, 0)
    assert sample("debit_worker_attempts_total", **number) - before == 1


def test_a_stripe_call_is_timed_by_endpoint_and_status_and_a_429_also_counted() -> None:
    # Given a call answered 429 after 0.3 s and one that got no answer
    endpoint = "GET /v1/accounts/{id}"
    limited = {"endpoint": endpoint, "status": "429"}
    count, total = (
        "debit_worker_stripe_request_duration_seconds_count",
        "debit_worker_stripe_request_duration_seconds_sum",
    )
    before = (sample(count, **limited), sample(total, **limited))
    rate_limited = moved(
        "debit_worker_stripe_rate_limited_total",
        {"endpoint": endpoint, "reason": "none"},
        lambda: metrics.stripe_answered(endpoint, 429, 0.3),
    )
    silent = moved(
        count,
        {"endpoint": endpoint, "status": "no_answer"},
        lambda: metrics.stripe_answered(endpoint, None, 20.0),
    )
    # Then the histogram has each under its status, and the 429 is counted as such
    assert sample(count, **limited) - before[0] == 1
    assert sample(total, **limited) - before[1] == pytest.approx(0.3)
    assert (rate_limited, silent) == (1, 1)
    # And a 200 is not a 429
    assert moved(
        "debit_worker_stripe_rate_limited_total",
        {"endpoint": endpoint, "reason": "none"},
        lambda: metrics.stripe_answered(endpoint, 200, 0.1),
    ) == (0)


def test_waits_for_the_rate_budget_are_observed_by_priority() -> None:
    # Given / When a debit waited 0.2 s and a spare read 4 s
    debits = moved(
        "debit_worker_rate_budget_wait_seconds_sum",
        {"priority": "debits"},
        lambda: metrics.rate_budget_waited(0.2, spare=False),
    )
    spare = moved(
        "debit_worker_rate_budget_wait_seconds_bucket",
        {"priority": "spare", "le": "5.0"},
        lambda: metrics.rate_budget_waited(4.0, spare=True),
    )
    # Then each priority has its own
    assert debits == pytest.approx(0.2)
    assert spare == 1


def test_a_pause_of_the_intake_is_counted_and_shown_until_it_takes_commands_again() -> None:
    # Given / When the intake pauses, then resumes
    pauses = sample("debit_worker_intake_pauses_total")
    metrics.intake_paused(True)
    paused = sample("debit_worker_intake_paused")
    metrics.intake_paused(False)
    # Then one pause was counted, and the gauge said so only meanwhile
    assert sample("debit_worker_intake_pauses_total") - pauses == 1
    assert (paused, sample("debit_worker_intake_paused")) == (1, 0)


def test_events_left_to_the_relay_are_counted_and_none_moves_nothing() -> None:
    name = "debit_worker_event_pump_left_to_relay_total"
    assert moved(name, {}, lambda: metrics.events_left_to_relay(3)) == 3
    assert moved(name, {}, lambda: metrics.events_left_to_relay(0)) == 0


def test_dead_letters_and_settlements_are_counted_by_their_labels() -> None:
    assert moved(
        "debit_worker_dead_letters_total", {"stage": "task"}, lambda: metrics.dead_lettered("task")
    ) == (1)
    assert moved(
        "debit_worker_reconciler_settlements_total",
        {"method": "stripe_records", "outcome": "succeeded"},
        lambda: metrics.reconciler_settled("stripe_records", "succeeded"),
    ) == (1)


# --- the catalogue -------------------------------------------------------------------------


def test_every_name_follows_prometheus_conventions() -> None:
    # Given every sample name the endpoint may show
    names = metrics.exposed_names()
    # Then each is the worker's, in base units, counters ending in _total
    assert all(name.startswith("debit_worker_") for name in names)
    assert not [name for name in names if "millis" in name or "minutes" in name]
    counters = {
        f"{family.name}_total"
        for metric in metrics.RECORDED
        for family in metric.describe()
        if family.type == "counter"
    }
    assert counters <= names
    assert "debit_worker_stripe_request_duration_seconds_bucket" in names


# --- several processes ---------------------------------------------------------------------

RECORDER: Final = """
import sys
from worker.ops import metrics
for _ in range(int(sys.argv[1])):
    metrics.debit_outcome(None)
metrics.intake_consuming(True)
with metrics.attempt(1):
    print("recorded", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def recorders(tmp_path: Path) -> Iterator[Callable[[int], subprocess.Popen[str]]]:
    """Worker-like processes recording into tmp_path (multiprocess mode); each stays alive,
    in the middle of an attempt, until its stdin closes."""
    started: list[subprocess.Popen[str]] = []

    def start(successes: int) -> subprocess.Popen[str]:
        env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
        process = subprocess.Popen(
            [sys.executable, "-c", RECORDER, str(successes)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert process.stdout is not None
        assert process.stdout.readline() == "recorded\n"
        started.append(process)
        return process

    yield start
    for process in started:
        if process.poll() is None:
            process.communicate("\n", timeout=30)


def values(registry: CollectorRegistry, name: str) -> dict[frozenset[tuple[str, str]], float]:
    return {
        frozenset(s.labels.items()): s.value
        for metric in registry.collect()
        for s in metric.samples
        if s.name == name
    }


def test_the_served_registry_sums_every_processs_files_and_forgets_a_dead_ones_gauges(
    tmp_path: Path, recorders: Callable[[int], subprocess.Popen[str]]
) -> None:
    # Given two worker processes that recorded 2 and 3 successes and are mid-attempt
    first, second = recorders(2), recorders(3)
    # When their directory is served
    served = metrics.serving_registry(str(tmp_path))
    # Then the counters are summed, the in-flight gauge too, and each reports itself
    succeeded = frozenset({("outcome", "succeeded"), ("code", "")})
    assert values(served, "debit_worker_debits_total")[succeeded] == 5
    assert values(served, "debit_worker_debits_in_flight") == {frozenset(): 2}
    assert process_states(served) == {
        str(first.pid): ProcessState(consuming=True),
        str(second.pid): ProcessState(consuming=True),
    }
    # When the first ends and is forgotten
    first.communicate("\n", timeout=30)
    forget_process(str(tmp_path), first.pid)
    # Then its live gauges are gone and its counts stay
    assert values(served, "debit_worker_debits_total")[succeeded] == 5
    assert values(served, "debit_worker_debits_in_flight") == {frozenset(): 1}
    assert set(process_states(served)) == {str(second.pid)}


def test_in_one_process_the_served_registry_is_its_own_and_its_state_carries_its_pid() -> None:
    # Given this process consuming, its key accepted
    metrics.intake_consuming(True)
    metrics.stripe_key_accepted(True)
    # When its own registry is served
    served = metrics.serving_registry(None)
    # Then its state is found under its own pid
    assert process_states(served)[str(os.getpid())] == ProcessState(
        consuming=True, stripe_key_accepted=True
    )
    metrics.intake_consuming(False)
    metrics.stripe_key_accepted(False)


# --- the ledger's gauges -------------------------------------------------------------------


def an_event(request_id: str) -> OutboxEvent:
    return OutboxEvent(
        event_id=f"evt-{request_id}",
        request_id=request_id,
        event_type="io.debit-worker.debit.failed.v1",
        routing_key="debit.failed",
        body="{}",
    )


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(datetime(2026, 3, 1, 12, 0, tzinfo=UTC))


@pytest.fixture
def ledger(tmp_path: Path, clock: FakeClock) -> Ledger:
    return migrated_ledger(tmp_path, clock)


def gauges(collector: LedgerGauges) -> dict[str, float]:
    return {family.name: family.samples[0].value for family in collector.collect()}


def test_the_ledger_gauges_count_what_waits_and_age_the_oldest(
    ledger: Ledger, clock: FakeClock
) -> None:
    # Given two requests escalated 10 and 4 minutes before an event was left unsent, and
    # one event sent
    start = clock.now
    escalate(ledger, "old")
    clock.advance(6 * 60)
    escalate(ledger, "new")
    clock.advance(4 * 60)
    ledger.outbox.add(an_event("new"))
    ledger.outbox.add(an_event("done"))
    ledger.outbox.mark_sent_many([row.row_id for row in ledger.outbox.for_request("done")])
    # When the gauges are collected 90 s later
    now = clock.now + timedelta(seconds=90)
    found = gauges(LedgerGauges(ledger.engine, clock=lambda: now))
    # Then they count what waits, and age the oldest of each
    assert found == {
        "debit_worker_ledger_up": 1,
        "debit_worker_outbox_unsent_events": 1,
        "debit_worker_outbox_lag_seconds": 90,
        "debit_worker_needs_reconciliation_requests": 2,
        "debit_worker_needs_reconciliation_oldest_age_seconds": (now - start).total_seconds(),
        "debit_worker_dead_letters_pending": 0,
    }


def escalate(ledger: Ledger, request_id: str) -> None:
    command = DebitRequested.model_validate(
        {
            "request_id": request_id,
            "account": "acct_1ExpressUS00000001",
            "amount": 2500,
            "currency": "usd",
            "reason": "platform_charge",
        }
    )
    ledger.requests.claim(command, "w", 60)
    assert ledger.requests.mark_needs_reconciliation(request_id, "w", "attempts exhausted")


def test_with_nothing_waiting_the_ages_are_zero(ledger: Ledger) -> None:
    found = gauges(LedgerGauges(ledger.engine))
    assert found["debit_worker_outbox_lag_seconds"] == 0
    assert found["debit_worker_needs_reconciliation_oldest_age_seconds"] == 0


def test_an_unreachable_ledger_shows_as_down_and_nothing_else(tmp_path: Path) -> None:
    # Given a ledger whose database cannot be opened
    engine = make_engine(f"sqlite:///{tmp_path}/missing/dir/ledger.db")
    # When the gauges are collected
    found = gauges(LedgerGauges(engine))
    # Then the scrape still answers: the ledger is down, with no made-up values
    assert found == {"debit_worker_ledger_up": 0}


# --- alert rules and dashboard -------------------------------------------------------------


def referenced(expression: str) -> set[str]:
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector) and node.name:
            names.add(node.name)

    promql_parser.walk(promql_parser.parse(expression), visit)
    return names


def alert_rules() -> list[dict[str, Any]]:
    loaded = yaml.safe_load(ALERTS.read_text(encoding="utf-8"))
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def dashboard_expressions() -> list[str]:
    panels = json.loads(DASHBOARD.read_text(encoding="utf-8"))["panels"]
    # Grafana's own interval variable stands for a range when Grafana sends the query.
    return [
        target["expr"].replace("$__rate_interval", "5m")
        for panel in panels
        for target in panel.get("targets", [])
    ]


def test_every_alert_rule_parses_and_names_only_metrics_the_worker_serves() -> None:
    # Given every rule of the rules file
    rules = alert_rules()
    assert len(rules) >= 10
    # When their expressions are parsed
    names = set().union(*(referenced(rule["expr"]) for rule in rules))
    # Then each names only metrics of the catalogue (or Prometheus's `up`)
    assert names - metrics.exposed_names() - PROMETHEUS_OWN == set()
    # And each says how bad it is and what happened
    for rule in rules:
        assert rule["labels"]["severity"] in {"critical", "warning"}, rule["alert"]
        assert rule["annotations"]["summary"], rule["alert"]


def test_every_dashboard_query_parses_and_names_only_metrics_the_worker_serves() -> None:
    # Given every query of the dashboard's panels
    expressions = dashboard_expressions()
    assert len(expressions) >= 15
    # When they are parsed
    names = set().union(*(referenced(expression) for expression in expressions))
    # Then each names only metrics of the catalogue, and together they show most of it
    assert names - metrics.exposed_names() == set()
    shown = {name.removesuffix(suffix) for name in names for suffix in ("_bucket", "_sum")}
    assert len(shown) >= 15


def test_the_parser_catches_a_name_the_worker_does_not_serve() -> None:
    # Given a rule with a typo in its metric's name (the check above must be able to fail)
    names = referenced("max(debit_worker_outbox_lag_second) > 120")
    # Then the typo is among what is referenced and not in the catalogue
    assert names - metrics.exposed_names() == {"debit_worker_outbox_lag_second"}
