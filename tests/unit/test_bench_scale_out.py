"""The benchmark's scale-out phase, its pure parts: who answered what (from the ledger's audit
entries), how evenly, whether any request was paid twice, what became of a killed
deployment's unfinished debits, and how the report judges it."""

from __future__ import annotations

import math
from typing import Any

from bench.load import Timeline
from bench.phases import Measured
from bench.report import Run, markdown
from bench.scale_out import (
    Entry,
    Kill,
    Recovery,
    ScaleOut,
    ScaleRun,
    by_host,
    payments_per_request,
    recovery,
    spread,
)

HOSTS = ("bench-host-1", "bench-host-2")


def test_work_shared_evenly_has_no_spread_and_one_idle_deployment_an_infinite_one() -> None:
    # Given the answers of two deployments, shared evenly, 10 % apart, or by one alone
    # When the spread is computed
    # Then it is the largest over the smallest, less one
    assert spread([3000, 3000]) == 0.0
    assert abs(spread([3300, 3000]) - 0.10) < 1e-9
    assert math.isinf(spread([6000, 0]))
    assert math.isnan(spread([6000]))


def test_outcomes_are_counted_by_the_host_named_in_the_actor_and_the_reconciler_apart() -> None:
    # Given outcome and attempt entries of two hosts, and one outcome settled by the reconciler
    entries = [
        Entry("fleet-1", "attempting", "bench-host-1:101:t1", 1.0),
        Entry("fleet-1", "succeeded", "bench-host-1:101:t1", 1.3),
        Entry("fleet-2", "attempting", "bench-host-2:202:t2", 1.0),
        Entry("fleet-2", "attempt", "bench-host-2:202:t2", 2.0),
        Entry("fleet-2", "succeeded", "bench-host-2:202:t2", 2.3),
        Entry("fleet-3", "succeeded", "reconciler", 9.0),
    ]
    # When outcomes and attempts are counted per host
    # Then each host has its own, and the reconciler's outcome is "other"
    assert by_host(entries, ("succeeded", "failed"), HOSTS) == {
        "bench-host-1": 1,
        "bench-host-2": 1,
        "other": 1,
    }
    assert by_host(entries, ("attempting", "attempt"), HOSTS) == {
        "bench-host-1": 1,
        "bench-host-2": 2,
    }


def test_a_deployment_that_answered_nothing_is_counted_as_zero() -> None:
    # Given outcomes recorded by one host only
    entries = [Entry("fleet-1", "succeeded", "bench-host-1:101:t1", 1.0)]
    # When counted per host / Then the silent host shows as 0, so its spread is infinite
    counted = by_host(entries, ("succeeded",), HOSTS)
    assert counted == {"bench-host-1": 1, "bench-host-2": 0}
    assert math.isinf(spread(list(counted.values())))


def a_payment(request_id: str) -> dict[str, Any]:
    return {"id": f"py_{request_id}", "metadata": {"request_id": request_id}}


def test_payments_are_counted_per_request_of_the_run_only() -> None:
    # Given payments of the steady run (one paid twice) and of the kill run, whose prefix
    # begins with the steady run's
    payments: list[dict[str, Any]] = [
        a_payment("fleet-0000001"),
        a_payment("fleet-0000002"),
        a_payment("fleet-0000002"),
        a_payment("fleetkill-0000001"),
        {"id": "py_seeded", "metadata": {}},
    ]
    # When the steady run's requests are counted by their payments
    # Then one has one payment and one has two; the kill run's are not among them
    assert payments_per_request(payments, "fleet") == {1: 1, 2: 1}
    assert payments_per_request(payments, "fleetkill") == {1: 1}


def a_scale_run(published: int, payments: dict[int, int], answered_by: dict[str, int]) -> ScaleRun:
    measured = Measured(
        "2 deployments",
        published=published,
        answered=published,
        seconds=10.0,
        stripe_requests=990,
        per_second=[99] * 10,
    )
    return ScaleRun(measured, answered_by, answered_by, payments)


def test_a_run_is_exactly_once_only_when_every_request_has_one_payment() -> None:
    # Given a run whose requests each have one payment, one with a request paid twice, and
    # one with a request never paid
    once = a_scale_run(1000, {1: 1000}, {"bench-host-1": 500, "bench-host-2": 500})
    twice = a_scale_run(1000, {1: 999, 2: 1}, {"bench-host-1": 500, "bench-host-2": 500})
    unpaid = a_scale_run(1000, {0: 1, 1: 999}, {"bench-host-1": 500, "bench-host-2": 500})
    # When each is judged / Then only the first is exactly once
    assert once.exactly_once
    assert not twice.exactly_once
    assert not unpaid.exactly_once
    # And the budget used is Stripe requests per second over the budget (990 in 10 s of 100)
    assert abs(once.budget_used - 0.99) < 1e-9


def test_the_killed_deployment_s_unfinished_debits_are_traced_to_who_finished_them() -> None:
    # Given a run where bench-host-2 (pids 201, 202) is killed at t=100 with two requests it
    # had claimed, one other host's request in flight, and one already answered
    timeline = Timeline()
    timeline.published = {"r-1": 99.0, "r-2": 99.5, "r-3": 99.8, "r-4": 98.0, "r-5": 101.0}
    timeline.answered = {"r-1": 112.0, "r-2": 121.0, "r-3": 100.4, "r-4": 98.5, "r-5": 101.4}
    entries = [
        Entry("r-1", "received", "bench-host-2:201:a", 99.1),
        Entry("r-1", "succeeded", "bench-host-1:101:b", 111.9),
        Entry("r-2", "received", "bench-host-2:202:c", 99.6),
        Entry("r-2", "succeeded", "bench-host-2:305:c", 120.9),  # its restarted process
        Entry("r-3", "received", "bench-host-1:101:d", 99.9),
        Entry("r-3", "succeeded", "bench-host-1:101:d", 100.3),
    ]
    kill = Kill(pids=frozenset({201, 202}), at=100.0, restarted_at=105.0, consuming_at=109.0)
    # When the recovery is traced
    found = recovery(timeline, entries, "bench-host-2", kill)
    # Then three were unfinished at the kill, two of them held by the killed host, finished
    # by the other host and by the killed one's restarted process, the last 21 s after
    assert found == Recovery(
        host="bench-host-2",
        killed_at=2.0,
        down_seconds=5.0,
        consuming_after=9.0,
        unfinished=3,
        held=2,
        unanswered=0,
        all_answered_after=21.0,
        held_answered_after=21.0,
        finished_by={"bench-host-1": 1, "bench-host-2 (restarted)": 1},
    )


def a_scale_out(killed_per_second: int, killed_payments: dict[int, int]) -> ScaleOut:
    shares = {"bench-host-1": 3000, "bench-host-2": 2900}
    steady = a_scale_run(1000, {1: 1000}, shares)
    killed = a_scale_run(1000, killed_payments, shares)
    killed.measured.per_second = [killed_per_second] * 10
    gone = Recovery("bench-host-2", 5.0, 5.0, 9.0, 40, 20, 0, 12.0, 12.0, {"bench-host-1": 20})
    return ScaleOut(2, 1, 32, 10.0, steady, killed, gone)


def report(scale: ScaleOut) -> str:
    ours = Measured("ours", published=100, answered=100, seconds=1.0)
    run = Run(ours, ours, ours, ours, 97.0, 60.0, "make bench", scale=scale)
    return markdown(run, "performance.png", "")


def target(text: str, starts: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {starts}"))


def test_the_report_meets_the_scale_out_targets_when_the_figures_do() -> None:
    # Given two deployments 3.4 % apart at 99 % of the budget, and a kill that cost 2 %
    text = report(a_scale_out(97, {1: 1000}))
    # When the report is written / Then every scale-out target is met, under its section
    assert "## Scaling out" in text
    assert target(text, "2 deployments at the full budget: zero 429s").endswith("| met |")
    assert target(text, "2 deployments: >= 95 % of the budget").endswith("| met |")
    assert target(text, "each deployment's share").endswith("| met |")
    assert target(text, "one deployment SIGKILLed").endswith("| met |")


def test_a_request_paid_twice_or_a_large_drop_misses_the_kill_target() -> None:
    # Given a kill run with a request paid twice, and one whose throughput fell by 10 %
    paid_twice = report(a_scale_out(99, {1: 999, 2: 1}))
    slower = report(a_scale_out(89, {1: 1000}))
    # When the reports are written / Then the kill target is missed in both
    assert target(paid_twice, "one deployment SIGKILLed").endswith("| **missed** |")
    assert target(slower, "one deployment SIGKILLed").endswith("| **missed** |")
