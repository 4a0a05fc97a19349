"""Stripe's cursor pagination over records kept sorted by when they were created.

Every listable record has a key `(created, sequence)`: its creation second, then a number
that grows with each record the sandbox makes, so records of the same second keep a stable
order. Lists answer newest first. A list may draw from several sorted runs at once (the
charges the API made, and each bulk-generated day); a page finds its place in each run by
bisection and merges them, so its cost does not grow with the number of records.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

Key = tuple[int, int]  # (created, sequence)
OLDEST: Key = (-(2**63), -1)  # below every key
NEWEST: Key = (2**63, 0)  # above every key


class SortedRun(Protocol):
    """Records in ascending key order, addressed by position."""

    def __len__(self) -> int: ...

    def key_at(self, index: int) -> Key: ...

    def id_at(self, index: int) -> str: ...

    def position(self, key: Key) -> int:
        """The first index whose key is >= `key` (len when there is none)."""
        ...


class KeyedRun:
    """A SortedRun held in two parallel lists; records may arrive out of order (a charge
    created with a past `created`), and are inserted where they belong."""

    __slots__ = ("_ids", "_keys", "_where")

    def __init__(self) -> None:
        self._keys: list[Key] = []
        self._ids: list[str] = []
        self._where: dict[str, Key] = {}

    def __len__(self) -> int:
        return len(self._keys)

    def add(self, ident: str, key: Key) -> None:
        index = bisect.bisect_right(self._keys, key)
        self._keys.insert(index, key)
        self._ids.insert(index, ident)
        self._where[ident] = key

    def key_of(self, ident: str) -> Key | None:
        return self._where.get(ident)

    def key_at(self, index: int) -> Key:
        return self._keys[index]

    def id_at(self, index: int) -> str:
        return self._ids[index]

    def position(self, key: Key) -> int:
        return bisect.bisect_left(self._keys, key)


@dataclass(frozen=True)
class Window:
    """The keys a list may answer with: from `low` (inclusive) to `high` (exclusive)."""

    low: Key = OLDEST
    high: Key = NEWEST

    @classmethod
    def created_between(cls, first: int | None, last: int | None) -> Window:
        """Records created from second `first` to second `last`, both included."""
        return cls(
            OLDEST if first is None else (first, OLDEST[1]),
            NEWEST if last is None else (last + 1, OLDEST[1]),
        )

    def since(self, second: int) -> Window:
        """Only records created at `second` or later."""
        return Window(max(self.low, (second, OLDEST[1])), self.high)

    def older_than(self, key: Key) -> Window:
        return Window(self.low, min(self.high, key))

    def newer_than(self, key: Key) -> Window:
        return Window(max(self.low, (key[0], key[1] + 1)), self.high)


@dataclass(frozen=True)
class Page:
    ids: list[str]  # newest first
    has_more: bool


def newest_first(
    runs: Sequence[SortedRun], window: Window, limit: int, hidden: Callable[[str], bool]
) -> Page:
    """The `limit` newest records in the window (a first page, or one after a cursor)."""
    found = _take(_merged(runs, window, descending=True), limit + 1, hidden)
    return Page(found[:limit], len(found) > limit)


def oldest_first(
    runs: Sequence[SortedRun], window: Window, limit: int, hidden: Callable[[str], bool]
) -> Page:
    """The `limit` oldest records in the window, still answered newest first: the page
    before an `ending_before` cursor; `has_more` says newer ones remain."""
    found = _take(_merged(runs, window, descending=False), limit + 1, hidden)
    return Page(found[:limit][::-1], len(found) > limit)


def _take(ids: Iterator[str], count: int, hidden: Callable[[str], bool]) -> list[str]:
    taken: list[str] = []
    for ident in ids:
        if hidden(ident):
            continue
        taken.append(ident)
        if len(taken) == count:
            break
    return taken


def _merged(runs: Sequence[SortedRun], window: Window, *, descending: bool) -> Iterator[str]:
    """The ids of every run's records inside the window, merged in key order."""
    sign = -1 if descending else 1
    heap: list[tuple[int, int, int, int, int]] = []  # (created, seq) signed, run, index, end
    for number, run in enumerate(runs):
        start, stop = run.position(window.low), run.position(window.high)
        if start >= stop:
            continue
        index, end = (stop - 1, start - 1) if descending else (start, stop)
        created, sequence = run.key_at(index)
        heap.append((sign * created, sign * sequence, number, index, end))
    heapq.heapify(heap)
    while heap:
        _, _, number, index, end = heap[0]
        run = runs[number]
        yield run.id_at(index)
        index += sign
        if index == end:
            heapq.heappop(heap)
            continue
        created, sequence = run.key_at(index)
        heapq.heapreplace(heap, (sign * created, sign * sequence, number, index, end))
