"""The paging engine behind every list: sorted runs merged newest first, windows, cursors."""

from __future__ import annotations

import bisect
import datetime

from tests.sandbox.helpers import EXPRESS_US
from worker.sandbox.bulk import BulkDay
from worker.sandbox.charges import DirectCharge
from worker.sandbox.core import Sandbox
from worker.sandbox.listing import Key, KeyedRun, Window, newest_first, oldest_first
from worker.sandbox.seed import load_seed


class ComputedRun:
    """A fake bulk run: record i created at `start + i`, its id computed, nothing stored."""

    def __init__(self, name: str, start: int, count: int, first_sequence: int) -> None:
        self.name, self.start, self.count, self.first = name, start, count, first_sequence
        self.reads = 0

    def __len__(self) -> int:
        return self.count

    def key_at(self, index: int) -> Key:
        self.reads += 1
        return (self.start + index, self.first + index)

    def id_at(self, index: int) -> str:
        return f"{self.name}{index}"

    def position(self, key: Key) -> int:
        return bisect.bisect_left(range(self.count), key, key=self.key_at)


def never(_: str) -> bool:
    return False


def test_two_runs_are_merged_newest_first_with_ties_in_creation_order() -> None:
    # Given records made by hand at seconds 10 and 12, and a computed run at 10..13
    made = KeyedRun()
    made.add("late", (12, 100))
    made.add("early", (10, 0))  # added out of order: inserted where it belongs
    computed = ComputedRun("b", start=10, count=4, first_sequence=1)

    # When the first page of five is asked for
    page = newest_first([made, computed], Window(), 5, never)

    # Then it is newest first; at second 12 the later-made record comes first
    assert page.ids == ["b3", "late", "b2", "b1", "b0"]
    assert page.has_more


def test_a_window_and_hidden_records_narrow_the_page() -> None:
    # Given a computed run: record ci created at second 100 + i
    run = ComputedRun("c", start=100, count=100, first_sequence=0)

    # When records created from 150 to 153 are listed, with c52 hidden
    page = newest_first([run], Window.created_between(150, 153), 10, lambda i: i == "c52")

    # Then exactly the others of that window come, and nothing is left
    assert page.ids == ["c53", "c51", "c50"]
    assert not page.has_more


def test_the_page_before_a_cursor_holds_the_records_just_newer_than_it() -> None:
    # Given ten records at seconds 0..9
    run = ComputedRun("d", start=0, count=10, first_sequence=0)

    # When the three records newer than d4 are asked for
    page = oldest_first([run], Window().newer_than(run.key_at(4)), 3, never)

    # Then they are d5..d7, newest first, and newer ones remain
    assert page.ids == ["d7", "d6", "d5"]
    assert page.has_more


def test_a_page_of_a_million_records_reads_only_a_few_keys() -> None:
    # Given a computed run of a million records
    run = ComputedRun("e", start=0, count=1_000_000, first_sequence=0)

    # When a page after a cursor deep inside it is taken
    page = newest_first([run], Window().older_than(run.key_at(500_000)), 100, never)

    # Then it bisects and reads on the order of log2(N) + page keys, not N
    assert page.ids[0] == "e499999"
    assert len(page.ids) == 100
    assert run.reads < 200


def test_every_charge_has_its_own_key_around_a_bulk_day() -> None:
    # Given a charge book with a charge made, then a bulk day, then another charge
    sandbox = Sandbox(load_seed())
    day = BulkDay(
        day=datetime.date(2026, 1, 1), count=3, accounts=(EXPRESS_US,), amount=1, currency="usd",
        prefix="k",
    )  # fmt: skip
    before = sandbox.direct_charge(DirectCharge(account=EXPRESS_US, amount=1, currency="usd"))
    block = sandbox.charges.add_day(day)
    after = sandbox.direct_charge(DirectCharge(account=EXPRESS_US, amount=1, currency="usd"))

    # When their sequence numbers are compared
    sequences = [
        sandbox.charges.key_of(before.id),
        *(block.key_at(i) for i in range(3)),
        sandbox.charges.key_of(after.id),
    ]

    # Then none is shared, and they grow in the order the charges were made
    numbers = [key[1] for key in sequences if key is not None]
    assert len(numbers) == 5
    assert numbers == sorted(set(numbers))
