"""A daily proof run (worker/ops/daily_proof.py): the ledger's successes of a day against
Stripe's charges, with the run and each difference written to the ledger."""

from __future__ import annotations

from dataclasses import replace
from datetime import timedelta
from pathlib import Path

from worker.ops.daily_proof import due_day, prove

from .fakes import World, a_body, a_world


def three_debits(tmp_path: Path) -> World:
    world = a_world(tmp_path)
    for n in (1, 2, 3):
        world.handle(a_body(request_id=f"req-{n}"))
    return world


def test_a_day_on_which_stripe_and_the_ledger_agree_is_recorded_clean(tmp_path: Path) -> None:
    # Given three debits made today
    world = three_debits(tmp_path)
    day = world.clock().date()

    # When the day is proved
    run = prove(world.ledger, world.stripe, day, "cli")

    # Then all three match, and the run is recorded clean with the list reads it cost
    assert (run.proof.stripe_charges, run.proof.matched, run.proof.unexplained) == (3, 3, 0)
    recorded = world.ledger.reconciliation.run(run.run_id)
    assert recorded is not None
    assert (recorded.status, recorded.matched, recorded.list_requests) == ("clean", 3, 1)


def test_a_planted_difference_of_each_kind_is_found_and_recorded(tmp_path: Path) -> None:
    # Given three debits made today, then: py_Fake1 removed at Stripe, py_Fake2's amount
    # changed, a charge for an unknown request, and a second charge for req-3
    world = three_debits(tmp_path)
    charges = world.stripe.charges
    del charges["py_Fake1"]
    charges["py_Fake2"] = replace(charges["py_Fake2"], amount=1)
    third = charges["py_Fake3"]
    world.stripe.plant_charge(replace(third, id="py_Stray", request_id="req-stray"))
    world.stripe.plant_charge(replace(third, id="py_Again"))

    # When the day is proved
    run = prove(world.ledger, world.stripe, world.clock().date(), "cli")

    # Then each is a recorded, unexplained difference of its kind
    found = {(d.kind, d.request_id) for d in world.ledger.reconciliation.differences(run.run_id)}
    assert found == {
        ("in_ledger_not_at_stripe", "req-1"),
        ("differs", "req-2"),
        ("at_stripe_not_in_ledger", "req-stray"),
        ("paid_twice", "req-3"),
    }
    recorded = world.ledger.reconciliation.run(run.run_id)
    assert recorded is not None
    assert (recorded.status, recorded.unexplained) == ("differences", 4)


def test_another_day_holds_none_of_todays_debits(tmp_path: Path) -> None:
    # Given three debits made today
    world = three_debits(tmp_path)

    # When yesterday is proved
    run = prove(world.ledger, world.stripe, world.clock().date() - timedelta(days=1), "cli")

    # Then there is nothing on either side
    assert (run.proof.stripe_charges, run.proof.ledger_debits, run.proof.differences) == (0, 0, [])


def test_the_schedule_proves_yesterday_only_from_its_hour(tmp_path: Path) -> None:
    # Given a moment at 01:59 and one at 02:00 UTC
    world = a_world(tmp_path)
    midnight = world.clock().replace(hour=0, minute=0, second=0, microsecond=0)

    # Then the day before is due from 02:00 only
    assert due_day(midnight + timedelta(hours=1, minutes=59), 2) is None
    assert due_day(midnight + timedelta(hours=2), 2) == midnight.date() - timedelta(days=1)
