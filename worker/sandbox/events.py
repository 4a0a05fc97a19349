"""Stripe's events for the platform's charges: what `GET /v1/events` lists.

One event is recorded whenever an account debit creates a charge, typed by the charge's
status (`charge.succeeded`, `charge.pending`, `charge.failed`), naming the request and the
idempotency key that created it. Stripe keeps events 30 days: older ones (on the sandbox
clock) are neither listed nor retrievable.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from worker.sandbox.clock import IdFactory, SandboxClock
from worker.sandbox.list_params import ListParams, paginate
from worker.sandbox.listing import Key, KeyedRun
from worker.sandbox.state import Payment

RETENTION_SECONDS = 30 * 24 * 3600
MAX_TYPES = 20


@dataclass(frozen=True, slots=True)
class Event:
    """`payment` is immutable, so rendering it later shows the charge as it was then."""

    id: str
    type: str
    created: int
    payment: Payment
    request_id: str | None
    idempotency_key: str | None


@dataclass(frozen=True)
class TypeFilter:
    """`type` (one name, `*` as a wildcard) or `types` (exact names); neither: every type."""

    pattern: re.Pattern[str] | None = None
    names: frozenset[str] = frozenset()

    @classmethod
    def matching(cls, wildcard: str) -> TypeFilter:
        return cls(pattern=re.compile(".*".join(re.escape(part) for part in wildcard.split("*"))))

    def admits(self, event_type: str) -> bool:
        if self.pattern is not None:
            return self.pattern.fullmatch(event_type) is not None
        return not self.names or event_type in self.names


class EventLog:
    def __init__(self, clock: SandboxClock, ids: IdFactory) -> None:
        self._clock = clock
        self._ids = ids
        self._events: dict[str, Event] = {}
        self._run = KeyedRun()
        self._sequence = 0
        self._hidden: set[str] = set()
        self._by_charge: dict[str, list[str]] = {}

    def __len__(self) -> int:
        return len(self._events)

    def charge_created(
        self, payment: Payment, *, request_id: str | None, idempotency_key: str | None
    ) -> Event:
        event = Event(
            self._ids.new("evt"),
            f"charge.{payment.status}",
            payment.created,
            payment,
            request_id,
            idempotency_key,
        )
        self._events[event.id] = event
        self._sequence += 1
        self._run.add(event.id, (event.created, self._sequence))
        self._by_charge.setdefault(payment.id, []).append(event.id)
        return event

    def hide_charge(self, charge_id: str) -> None:
        """Forget a charge's events, as for a charge Stripe never made."""
        self._hidden.update(self._by_charge.get(charge_id, ()))

    def get(self, ident: str) -> Event | None:
        event = self._events.get(ident)
        if event is None or ident in self._hidden or event.created < self._oldest_kept():
            return None
        return event

    def page(self, params: ListParams, types: TypeFilter) -> tuple[list[Event], bool]:
        kept = params.created.since(self._oldest_kept())

        def hidden(ident: str) -> bool:
            return ident in self._hidden or not types.admits(self._events[ident].type)

        found = paginate(
            ListParams(params.limit, params.starting_after, params.ending_before, kept),
            [self._run],
            self._key_of,
            hidden,
            "event",
        )
        return [self._events[ident] for ident in found.ids], found.has_more

    def _key_of(self, ident: str) -> Key | None:
        return self._run.key_of(ident) if self.get(ident) is not None else None

    def _oldest_kept(self) -> int:
        return math.ceil(self._clock.now() - RETENTION_SECONDS)
