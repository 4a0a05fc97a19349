"""What the ledger hands back about a debit request: its record, and what a claim found."""

from __future__ import annotations

from dataclasses import dataclass, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

from worker.adapters.ledger.tables import Status


@dataclass(frozen=True, slots=True)
class RequestRecord:
    request_id: str
    fingerprint: str
    command: dict[str, Any]
    status: Status
    attempts: int
    idempotency_key: str | None
    payment_id: str | None
    failure_code: str | None
    failure_message: str | None
    received_at: datetime
    updated_at: datetime
    finished_at: datetime | None
    lease_owner: str | None
    lease_until: datetime | None
    first_attempt_at: datetime | None = None
    producer: str | None = None  # verified when claimed; None: claimed unsigned
    charged_at: datetime | None = None  # the Stripe charge's `created`, with a success


# The columns read into a record as they are (each field is named as its column).
_PLAIN: Final = tuple(f.name for f in fields(RequestRecord) if f.name not in {"command", "status"})


def record_of(row: Any) -> RequestRecord:
    """A debit_requests row (a mapping) as a record."""
    plain = {name: row[name] for name in _PLAIN}
    return RequestRecord(**plain, command=dict(row["command"]), status=Status(row["status"]))


def fresh_record(row: dict[str, Any]) -> RequestRecord:
    """The row a first claim wrote, as reading it back would return it (in UTC)."""
    received_at = row["received_at"].astimezone(UTC)
    lease_until = row["lease_until"].astimezone(UTC)
    not_yet = ("idempotency_key", "payment_id", "failure_code", "failure_message")
    return record_of(
        row
        | dict.fromkeys((*not_yet, "finished_at", "first_attempt_at", "charged_at"))
        | {"attempts": 0, "received_at": received_at, "updated_at": received_at}
        | {"lease_until": lease_until}
    )


class ClaimKind(StrEnum):
    NEW = "new"  # first sight: decide the policy
    RESUMED = "resumed"  # seen before, not finished: carry on from its status
    FINISHED = "finished"  # already has an outcome: re-emit it
    CONFLICT = "conflict"  # same request_id, other content
    BUSY = "busy"  # another worker holds the lease


@dataclass(frozen=True, slots=True)
class Claim:
    kind: ClaimKind
    record: RequestRecord


@dataclass(frozen=True, slots=True)
class Success:
    payment_id: str
    transfer_id: str | None
    balance_transaction: str | None
    charged_at: datetime | None = None  # the charge's `created` time at Stripe
