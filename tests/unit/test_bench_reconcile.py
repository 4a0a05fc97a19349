"""The benchmark's reconciliation phases, their pure parts: the ledger rows seeded for a day
the sandbox generates, and how the figures are judged against the targets."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime

from bench.day_seed import COLUMNS, rows
from bench.phases import Measured
from bench.reconcile import DayProofMeasured, ReconcileCost
from bench.report import Run, markdown
from schemas.commands import DebitRequested
from worker.sandbox.bulk import BulkBlock, BulkDay

ACCOUNTS = ("acct_1BenchUS0000000000", "acct_1BenchUS0000000001", "acct_1BenchUS0000000002")
SPEC = BulkDay(
    day=date(2026, 11, 2), count=7, accounts=ACCOUNTS, amount=1, currency="usd", prefix="rday"
)


def seeded() -> list[dict[str, object]]:
    return [dict(zip(COLUMNS, row, strict=True)) for row in rows(SPEC)]


def test_each_seeded_request_is_the_command_the_worker_would_have_stored() -> None:
    # Given a generated day's seeded rows
    # When each row's stored command is read back as a DebitRequested
    # Then its fingerprint and stored form are what the worker computes for that command
    for row in seeded():
        stored = DebitRequested.model_validate_json(str(row["command"]))
        assert row["fingerprint"] == stored.fingerprint()
        assert stored.model_dump(mode="json") == json.loads(str(row["command"]))
        assert (row["request_id"], row["account"]) == (stored.request_id, stored.account)


def test_each_seeded_success_names_the_charge_the_sandbox_generates_for_it() -> None:
    # Given the sandbox's own definition of the generated day
    block = BulkBlock(SPEC, first_sequence=0)
    # When the ledger rows are seeded for it
    found = seeded()
    # Then row i holds charge i: its id, account, amount, request id and created time
    assert len(found) == SPEC.count
    for index, row in enumerate(found):
        charge = block.payment(index)
        assert row["payment_id"] == charge.id
        assert row["transfer_id"] == charge.transfer_id
        assert row["account"] == charge.source_account
        assert (row["amount"], row["currency"]) == (charge.amount, charge.currency)
        assert row["request_id"] == charge.metadata["request_id"]
        assert row["charged_at"] == datetime.fromtimestamp(charge.created, UTC)
        assert row["status"] == "succeeded"


def a_run(name: str, answered: int, seconds: float) -> Measured:
    return Measured(name, published=answered, answered=answered, seconds=seconds)


def a_proof(debits: int, list_requests: int, unexplained: int = 0) -> DayProofMeasured:
    return DayProofMeasured(
        debits=debits,
        seed_seconds=1.0,
        seconds=2.0,
        proof_seconds=1.5,
        status="clean" if not unexplained else "differences",
        stripe_charges=debits,
        ledger_debits=debits,
        matched=debits - unexplained,
        unexplained=unexplained,
        list_requests=list_requests,
        sandbox_list_requests=list_requests,
        rate_limited=0,
        rss_peak_mb=100.0,
    )


def test_the_drop_is_the_share_of_throughput_lost_while_the_proof_runs() -> None:
    # Given 100 debits/s alone and 96 debits/s with the proof reading
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 960, 10.0), 12, True)
    # When the drop is computed
    # Then it is 4 %
    assert abs(cost.drop - 0.04) < 1e-9


def test_a_proof_reads_as_many_debits_per_list_request_as_it_matched_per_page() -> None:
    # Given a proof of 1,000,000 charges in 10,000 list requests
    proof = a_proof(1_000_000, 10_000)
    # When its density is read
    # Then each list request brought 100 debits
    assert proof.debits_per_list_request == 100.0


def report(day: DayProofMeasured, cost: ReconcileCost) -> str:
    ours = a_run("ours", 100, 1.0)
    run = Run(ours, ours, ours, ours, 97.0, 60.0, "make bench", day=day, cost=cost)
    return markdown(run, "performance.png", "")


def target(text: str, starts: str) -> str:
    return next(line for line in text.splitlines() if line.startswith(f"| {starts}"))


def test_the_report_meets_the_reconciliation_targets_when_the_figures_do() -> None:
    # Given a clean proof of a million debits and a 1 % drop with the proof running
    day = a_proof(1_000_000, 10_000)
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 990, 10.0), 30, True)
    # When the report is written
    text = report(day, cost)
    # Then both reconciliation targets are met
    assert target(text, "daily proof of 1,000,000 debits").endswith("| met |")
    assert target(text, "debit throughput with the daily proof").endswith("| met |")


def test_the_report_misses_the_targets_on_an_unexplained_difference_or_a_large_drop() -> None:
    # Given a proof with one unexplained difference, and a 10 % drop
    day = a_proof(1_000_000, 10_000, unexplained=1)
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 900, 10.0), 30, True)
    # When the report is written
    text = report(day, cost)
    # Then both are missed
    assert target(text, "daily proof of 1,000,000 debits").endswith("| **missed** |")
    assert target(text, "debit throughput with the daily proof").endswith("| **missed** |")


def test_a_drop_measured_after_the_proof_ended_does_not_meet_the_target() -> None:
    # Given no drop, but a proof that had finished before the loaded run did
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 1000, 10.0), 30, False)
    # When the report is written
    text = report(a_proof(1_000_000, 10_000), cost)
    # Then the throughput target is missed: nothing was measured alongside the proof
    assert target(text, "debit throughput with the daily proof").endswith("| **missed** |")


def test_a_day_smaller_than_a_million_does_not_meet_the_daily_proof_target() -> None:
    # Given a clean proof of a quick run's 20,000 debits
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 1000, 10.0), 30, True)
    # When the report is written
    text = report(a_proof(20_000, 200), cost)
    # Then the million-debit target is not claimed
    assert target(text, "daily proof of 1,000,000 debits").endswith("| **missed** |")


def test_a_rise_in_throughput_with_the_proof_running_reads_as_higher_not_as_a_negative_drop() -> (
    None
):
    # Given a run with the proof that answered faster than the run alone (host noise)
    cost = ReconcileCost(a_run("alone", 1000, 10.0), a_run("with", 1020, 10.0), 30, True)
    # When the report is written
    text = report(a_proof(1_000_000, 10_000), cost)
    # Then it says how much higher, and the target is met
    line = target(text, "debit throughput with the daily proof")
    assert "2.0 % higher" in line
    assert line.endswith("| met |")
