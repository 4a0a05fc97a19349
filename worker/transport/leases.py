"""The leases one worker process holds: request id and lease owner of each debit in progress,
so that the lease keeper (worker/ops/lease_keeper.py) renews them all in one statement.

A lease is held from a successful claim until its attempt ends (outcome recorded, retry
scheduled, escalated or left): once it ends, nobody renews it, and a lease left behind runs
out by itself. Counted, so that two attempts with one owner (a task delivered twice) keep it
until both have ended.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

Held = tuple[str, str]  # (request id, lease owner)


class LeaseRegistry:
    """Thread-safe: the worker threads hold and forget, the keeper thread reads and drops."""

    def __init__(self) -> None:
        self._held: Counter[Held] = Counter()
        self._lock = threading.Lock()

    def hold(self, request_id: str, owner: str) -> None:
        with self._lock:
            self._held[(request_id, owner)] += 1

    def forget(self, request_id: str, owner: str) -> None:
        """One attempt holding it ended; another owner's lease is left alone."""
        key = (request_id, owner)
        with self._lock:
            if self._held[key] <= 1:
                del self._held[key]
            else:
                self._held[key] -= 1

    @contextmanager
    def holding(self, request_id: str, owner: str) -> Iterator[None]:
        """Renewed while the block runs, however it ends."""
        self.hold(request_id, owner)
        try:
            yield
        finally:
            self.forget(request_id, owner)

    def held(self) -> list[Held]:
        """A snapshot of every lease held now."""
        with self._lock:
            return list(self._held)

    def drop(self, lost: Iterable[Held]) -> list[Held]:
        """Stop renewing leases no longer ours; returns those that were still held (an
        attempt that ended meanwhile has forgotten its own already)."""
        with self._lock:
            return [key for key in lost if self._held.pop(key, 0)]

    def __len__(self) -> int:
        with self._lock:
            return len(self._held)
