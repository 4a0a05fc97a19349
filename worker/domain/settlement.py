"""How an unknown outcome is settled from Stripe's own records: a pure decision over what was
read, so every branch is testable without Stripe or a ledger.

A request is never settled on a guess. It succeeds only on exactly one succeeded charge of
the money asked for; it fails `not_executed` only when Stripe's records over the whole
window in which the charge could have been created (its attempts, plus a grace for a 500
that Stripe carries out late) hold none; anything else stays open, and what is ambiguous
says so, for an alert.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from schemas.codes import FailureCode
from worker.domain.types import ChargeSeen

# Stripe stamps `created` with its own clock; ours may differ by a little.
CLOCK_SKEW = timedelta(seconds=60)


@dataclass(frozen=True, slots=True)
class Unknown:
    """A request whose outcome at Stripe is unknown, as the ledger holds it."""

    request_id: str
    account: str
    amount: int
    currency: str
    idempotency_key: str
    first_attempt_at: datetime
    last_attempt_at: datetime  # the ledger's last change: no Stripe call after it

    def window(self, grace: timedelta) -> tuple[datetime, datetime]:
        """[from, until): where a charge made for this request can have `created`."""
        return self.first_attempt_at - CLOCK_SKEW, self.last_attempt_at + grace + CLOCK_SKEW


@dataclass(frozen=True, slots=True)
class Succeeded:
    charge: ChargeSeen


@dataclass(frozen=True, slots=True)
class Failed:
    code: FailureCode
    message: str
    charge: ChargeSeen | None = None


@dataclass(frozen=True, slots=True)
class StaysOpen:
    reason: str
    ambiguous: bool  # True: a person must look (alert); False: time will tell


Verdict = Succeeded | Failed | StaysOpen


def differences(request: Unknown, charge: ChargeSeen) -> list[str]:
    """How a charge differs from the debit the request asked for, in words."""
    found = []
    if charge.amount != request.amount:
        found.append(f"amount {charge.amount} (asked {request.amount})")
    if charge.currency.lower() != request.currency.lower():
        found.append(f"currency {charge.currency!r} (asked {request.currency!r})")
    if charge.account != request.account:
        found.append(f"account {charge.account!r} (asked {request.account!r})")
    return found


def decide(
    request: Unknown,
    charges: list[ChargeSeen],
    *,
    read_until: datetime,
    grace: timedelta,
) -> Verdict:
    """`charges`: every charge Stripe's records tie to the request (by its metadata or by an
    Event carrying its idempotency key), read over its window up to `read_until`."""
    found = {charge.id: charge for charge in charges}
    if len(found) > 1:
        return StaysOpen(
            f"Stripe holds {len(found)} charges for request {request.request_id} "
            f"({', '.join(sorted(found))}): it may have been paid twice",
            ambiguous=True,
        )
    if not found:
        return _none_found(request, read_until, grace)
    (charge,) = found.values()
    return _one_found(request, charge)


def _none_found(request: Unknown, read_until: datetime, grace: timedelta) -> Verdict:
    window_starts, window_ends = request.window(grace)
    if read_until < window_ends:
        return StaysOpen(
            f"no charge at Stripe yet; Stripe may still carry out a late attempt until "
            f"{window_ends.isoformat()}",
            ambiguous=False,
        )
    return Failed(
        FailureCode.NOT_EXECUTED,
        f"Stripe's records from {window_starts.isoformat()} to {window_ends.isoformat()} "
        f"hold no charge for request {request.request_id} (no Event with key "
        f"{request.idempotency_key}, none in the charges list with its request_id): the "
        "debit was not carried out",
    )


def _one_found(request: Unknown, charge: ChargeSeen) -> Verdict:
    problems = differences(request, charge)
    if problems:
        return StaysOpen(
            f"Stripe's charge {charge.id} for request {request.request_id} is not the debit "
            f"asked for: {'; '.join(problems)}",
            ambiguous=True,
        )
    if charge.status == "succeeded" and charge.paid:
        return Succeeded(charge)
    if charge.status == "failed":
        return Failed(
            FailureCode.STRIPE_REJECTED,
            f"Stripe's charge {charge.id} for this request failed: no money moved",
            charge,
        )
    return StaysOpen(
        f"Stripe's charge {charge.id} has status {charge.status!r} (paid {charge.paid})",
        ambiguous=charge.status != "pending",  # a pending charge settles by itself
    )
