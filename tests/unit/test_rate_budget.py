"""The local rate budget on a fake clock: Stripe's global limit and each endpoint class's,
both binding; priorities (a debit's charge, the reads that unblock a debit, background
reads); and backing off the limit a 429 names."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.adapters.rate_budget import (
    CLASS_HELD,
    ENDPOINT_CLASSES,
    NOT_YET,
    TAKEN,
    Limit,
    LocalRateBudget,
    Priority,
    RateBudget,
    Unlimited,
    backed_off,
    decide,
    effective_priority,
    in_background,
    mark,
    penalty_seconds,
)

from .fakes import FakeMonotonic

DEBIT, UNBLOCKS, BACKGROUND = Priority.DEBIT, Priority.UNBLOCKS_DEBIT, Priority.BACKGROUND


class Meanwhile(FakeMonotonic):
    """A fake clock that, the first time someone sleeps, runs what other threads would do
    meanwhile (each action once, in order, on the same clock): at the start of the nap, or
    (`at_end`) once it is over."""

    def __init__(self, *, at_end: bool = False) -> None:
        super().__init__()
        self.actions: list[Callable[[], None]] = []
        self._at_end = at_end
        self._busy = False

    def sleep(self, seconds: float) -> None:
        if self._at_end:
            super().sleep(seconds)
        if not self._busy:
            self._busy = True
            while self.actions:
                self.actions.pop(0)()
            self._busy = False
        if not self._at_end:
            super().sleep(seconds)


def budget_on(
    clock: FakeMonotonic, rate: float, burst_seconds: float = 0.5, **endpoint_rates: float
) -> LocalRateBudget:
    return LocalRateBudget(
        rate, endpoint_rates, burst_seconds=burst_seconds, clock=clock, sleep=clock.sleep
    )


def waited(clock: FakeMonotonic, take: Callable[[], None]) -> float:
    start = clock.now
    take()
    return clock.now - start


# --- both limits bind -----------------------------------------------------------------------


def test_a_full_budget_lets_a_burst_through_then_the_global_limit_spaces_the_rest() -> None:
    # Given a global limit of 10/s with a burst of 4 (0.4 s), the charges allowed 100/s
    clock = FakeMonotonic()
    budget = budget_on(clock, 10, 0.4, charges=100)

    # When 5 charges go out at once
    for _ in range(4):
        budget.acquire("charges", DEBIT)

    # Then 4 went without waiting, and the fifth waits a tenth of a second
    assert clock.slept == []
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(0.1)


def test_the_charges_limit_binds_below_the_global_one_and_reads_still_go() -> None:
    # Given a global limit of 100/s and charges held to Stripe's default 25/s, burst 0.2 s
    clock = FakeMonotonic()
    budget = budget_on(clock, 100, 0.2)

    # When 6 charges go out at once: 5 (the class's burst) go, the sixth waits for its class
    for _ in range(5):
        budget.acquire("charges", DEBIT)
    assert clock.slept == []
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(0.04)

    # Then an account read still goes at once: the global limit has room
    assert waited(clock, lambda: budget.acquire("account_reads", UNBLOCKS)) == 0


def test_charges_queued_behind_their_class_leave_the_global_capacity_to_other_reads() -> None:
    # Given a global limit of 100/s (burst 20), charges at 5/s (burst 1), and a charge that
    # has taken the class's only token
    clock = Meanwhile()
    budget = budget_on(clock, 100, 0.2, charges=5, refund_reads=100)
    budget.acquire("charges", DEBIT)
    read_waits: list[float] = []
    clock.actions = [
        lambda: read_waits.append(waited(clock, lambda: budget.acquire("refund_reads", UNBLOCKS)))
        for _ in range(10)
    ]

    # When the next charge waits for its class, and 10 refund reads come as it starts waiting
    charge_wait = waited(clock, lambda: budget.acquire("charges", DEBIT))

    # Then the charge waited for its class (0.2 s) and the reads went at once: the waiting
    # charge held no global capacity (had it reserved its global slot 0.2 s ahead, the
    # global schedule would have been in debt)
    assert charge_wait == pytest.approx(0.2)
    assert read_waits == [0.0] * 10


def test_a_request_takes_a_token_from_the_global_limit_and_its_class_at_once() -> None:
    # Given a global limit of 10/s and account reads at 100/s, burst 0.2 s (2 global)
    clock = FakeMonotonic()
    budget = budget_on(clock, 10, 0.2, account_reads=100)

    # When account reads take the global burst
    budget.acquire("account_reads", DEBIT)
    budget.acquire("account_reads", DEBIT)

    # Then a charge waits too, for the global limit
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(0.1)


@settings(max_examples=120, deadline=None)
@given(
    rate=st.floats(min_value=2, max_value=200),
    class_rates=st.lists(st.floats(min_value=1, max_value=200), min_size=3, max_size=3),
    burst_seconds=st.floats(min_value=0.05, max_value=1),
    calls=st.lists(
        st.tuples(
            st.sampled_from(["charges", "account_reads", "charge_lists"]),
            st.sampled_from(list(Priority)),
            st.floats(min_value=0, max_value=0.5),
        ),
        min_size=1,
        max_size=80,
    ),
)
def test_no_limit_is_ever_exceeded_whatever_the_classes_priorities_and_pauses(
    rate: float,
    class_rates: list[float],
    burst_seconds: float,
    calls: list[tuple[str, Priority, float]],
) -> None:
    # Given a budget on a fake clock whose sleep moves the clock
    clock = FakeMonotonic(0.0)
    rates = dict(zip(["charges", "account_reads", "charge_lists"], class_rates, strict=True))
    budget = budget_on(clock, rate, burst_seconds, **rates)

    # When calls of any class and priority arrive after arbitrary pauses
    sent: dict[str, list[float]] = {"global": []}
    for endpoint_class, priority, gap in calls:
        clock.advance(gap)
        budget.acquire(endpoint_class, priority)
        sent["global"].append(clock.now)
        sent.setdefault(endpoint_class, []).append(clock.now)

    # Then within every window [t_i, t_j] each schedule let at most rate * T + burst through
    for name, stamps in sent.items():
        limit = rate if name == "global" else rates[name]
        allowance = max(1.0, limit * burst_seconds)
        for i in range(len(stamps)):
            for j in range(i, len(stamps)):
                assert j - i + 1 <= limit * (stamps[j] - stamps[i]) + allowance + 1e-6


# --- priorities -----------------------------------------------------------------------------


def test_marks_are_one_token_for_a_charge_a_quarter_and_half_the_burst_for_reads() -> None:
    assert [mark(priority, 8) for priority in Priority] == [1, 2, 4]
    # A small burst still lets any priority take a whole token
    assert [mark(priority, 1.5) for priority in Priority] == [1, 1, 1]


def test_a_read_that_unblocks_a_debit_goes_where_a_background_read_must_wait() -> None:
    # Given a global limit of 16/s with a burst of 8, drained to 3 tokens by charges
    clock = FakeMonotonic()
    budget = budget_on(clock, 16, 0.5, charges=100, account_reads=100, charge_lists=100)
    for _ in range(5):
        budget.acquire("charges", DEBIT)

    # When an account read (mark 2) asks, it goes at once
    assert waited(clock, lambda: budget.acquire("account_reads", UNBLOCKS)) == 0

    # Then a background list read (mark 4, 2 held) waits until 4 have accrued
    assert waited(clock, lambda: budget.acquire("charge_lists", BACKGROUND)) == pytest.approx(
        2 / 16
    )


def test_a_background_read_on_a_full_budget_leaves_half_the_burst_to_debits() -> None:
    # Given a full budget of 10/s with a burst of 4
    clock = FakeMonotonic()
    budget = budget_on(clock, 10, 0.4, charge_lists=100, charges=100)

    # When background reads take tokens back to back
    for _ in range(3):
        budget.acquire("charge_lists", BACKGROUND)

    # Then three went at once (down to half the burst), and a charge still goes at once
    assert clock.slept == []
    budget.acquire("charges", DEBIT)
    assert clock.slept == []


def test_a_background_read_waits_while_charges_drain_the_budget_and_goes_after_them() -> None:
    # Given a budget of 10/s, burst 4, emptied, with 20 charges queued meanwhile that take
    # every token as it accrues
    clock = Meanwhile(at_end=True)
    budget = budget_on(clock, 10, 0.4, charges=100, charge_lists=100)
    for _ in range(4):
        budget.acquire("charges", DEBIT)
    charges_at: list[float] = []

    def charge() -> None:
        budget.acquire("charges", DEBIT)
        charges_at.append(clock.now)

    clock.actions = [charge] * 20
    start = clock.now

    # When a background read asks for a token while they run
    budget.acquire("charge_lists", BACKGROUND)
    read_at = clock.now

    # Then every charge went first, at the full rate, and the read only once the budget had
    # refilled to half its burst after the last of them
    assert len(charges_at) == 20
    assert charges_at[-1] - start == pytest.approx(2.0)
    assert read_at - charges_at[-1] == pytest.approx(0.2)


def test_a_background_read_also_needs_its_own_class_to_hold_the_mark() -> None:
    # Given plenty of global room, list reads at 4/s with a burst of 2 (mark 1)
    clock = FakeMonotonic()
    budget = budget_on(clock, 100, 0.5, charge_lists=4)

    # When three list reads go in a row
    for _ in range(2):
        budget.acquire("charge_lists", BACKGROUND)

    # Then the third waits for its class
    assert waited(clock, lambda: budget.acquire("charge_lists", BACKGROUND)) == pytest.approx(0.25)


def test_calls_made_in_the_background_take_background_priority() -> None:
    # Given / When a platform read's priority is asked inside and outside `in_background`
    with in_background():
        inside = effective_priority(UNBLOCKS)
    outside = effective_priority(UNBLOCKS)
    # Then only inside is it lowered, and never raised
    assert (inside, outside) == (BACKGROUND, UNBLOCKS)


# --- the rules themselves --------------------------------------------------------------------


def test_a_charge_whose_class_is_busy_reserves_the_class_slot_only() -> None:
    # Given a global schedule free now and a class whose next slot is in 2 s
    limits = (Limit.of(100, 0.5), Limit.of(5, 0.5))

    # When a charge asks, then asks again with its class slot held once that came
    first = decide(10.0, limits, 0.0, 12.0, DEBIT)
    second = decide(12.0, limits, first.global_free, first.class_free, DEBIT, class_held=True)

    # Then it first held the class slot (the global untouched), then took a global one
    assert (first.verdict, first.wait, first.global_free) == (CLASS_HELD, 2.0, 0.0)
    assert first.class_free == pytest.approx(12.2)
    assert (second.verdict, second.wait, second.class_free) == (TAKEN, 0.0, first.class_free)


def test_a_lower_priority_that_finds_too_little_takes_nothing() -> None:
    # Given a global schedule holding 1 token (its next slot is now)
    limits = (Limit.of(10, 0.8), Limit.of(100, 0.8))

    # When a background read asks (mark: 4 of a burst of 8)
    answer = decide(5.0, limits, 5.0, 0.0, BACKGROUND)

    # Then it takes nothing and is told to ask again once 3 more have accrued
    assert (answer.verdict, answer.global_free, answer.class_free) == (NOT_YET, 5.0, 0.0)
    assert answer.wait == pytest.approx(0.3)


# --- backing off what a 429 names -------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "limit"),
    [
        ("endpoint-rate", "endpoint"),
        ("endpoint-concurrency", "endpoint"),
        ("resource-specific", "endpoint"),
        ("global-rate", "global"),
        ("global-concurrency", "global"),
        ("something-new", None),
        (None, None),
    ],
)
def test_a_429s_reason_names_the_limit_backed_off(reason: str | None, limit: str | None) -> None:
    assert backed_off(reason) == limit


def test_an_endpoint_rate_429_holds_back_that_class_for_a_second_and_no_other() -> None:
    # Given a full budget
    clock = FakeMonotonic()
    budget = budget_on(clock, 100)

    # When Stripe answers a charge 429 endpoint-rate
    budget.rate_limited("charges", "endpoint-rate", None)

    # Then the next charge waits a second, while an account read goes at once
    assert waited(clock, lambda: budget.acquire("account_reads", UNBLOCKS)) == 0
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(1.0)


@pytest.mark.parametrize("reason", ["global-rate", "global-concurrency"])
def test_a_global_429_holds_back_every_class(reason: str) -> None:
    # Given a full budget
    clock = FakeMonotonic()
    budget = budget_on(clock, 100)

    # When Stripe answers a refund read 429 for the global limit
    budget.rate_limited("refund_reads", reason, None)

    # Then a charge waits a second too
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(1.0)


@pytest.mark.parametrize("reason", [None, "something-new"])
def test_a_429_that_names_no_limit_holds_nothing_back(reason: str | None) -> None:
    # Given a full budget
    clock = FakeMonotonic()
    budget = budget_on(clock, 100)

    # When Stripe answers a charge 429 without a reason, or with one not known
    budget.rate_limited("charges", reason, None)

    # Then the next charge and the next read go at once
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == 0
    assert waited(clock, lambda: budget.acquire("refund_reads", UNBLOCKS)) == 0


def test_a_429_with_retry_after_holds_back_that_long_and_repeats_do_not_add_up() -> None:
    # Given a full budget
    clock = FakeMonotonic()
    budget = budget_on(clock, 100)

    # When Stripe answers 429s asking for 3 s, then another for no time in particular
    budget.rate_limited("charges", "endpoint-rate", 3.0)
    budget.rate_limited("charges", "endpoint-rate", 3.0)
    budget.rate_limited("charges", "endpoint-rate", None)

    # Then the next charge waits the 3 s once
    assert waited(clock, lambda: budget.acquire("charges", DEBIT)) == pytest.approx(3.0)
    assert penalty_seconds(10_000) == 60  # an absurd Retry-After is not believed


# --- construction and no budget ----------------------------------------------------------------


def test_an_unknown_endpoint_class_is_refused_naming_the_known_ones() -> None:
    with pytest.raises(ValueError, match="charges, account_reads"):
        LocalRateBudget(25, {"list_reads": 25})
    assert "charges" in ENDPOINT_CLASSES


def test_without_a_budget_every_call_goes_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    # Given no request budget, in a process where any sleep is recorded instead of waited
    slept: list[float] = []
    monkeypatch.setattr(time, "sleep", slept.append)
    budget: RateBudget = Unlimited()

    # When many calls of every priority ask, and Stripe rate-limits one
    budget.rate_limited("charges", "endpoint-rate", 5)
    for _ in range(1_000):
        for priority in Priority:
            budget.acquire("charges", priority)

    # Then none waited
    assert slept == []
