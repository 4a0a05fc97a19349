"""The lease keeper: renews every lease this worker process holds, so that leases can be short.

A claim holds a request for `claim_lease_seconds` (9 s by default). While the debit is in
progress, this thread extends all of the process's leases every third of that, in one
statement, however long the Stripe call takes. A process that dies stops renewing: its
requests are free at most one lease after its last renewal, and the janitor of any live
process re-enqueues them (worker/ops/janitor.py).

A lease found taken by another process (this one stalled past it, or was cut off from the
database) is logged and no longer renewed; the fence before each Stripe call
(worker/adapters/ledger/attempts.py) keeps the stalled attempt from calling Stripe again.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from worker.adapters.ledger import Ledger
from worker.bootstrap import Runtime
from worker.ops.background import PeriodicStep
from worker.transport.leases import Held, LeaseRegistry

log = logging.getLogger(__name__)

RENEWALS_PER_LEASE = 3


@dataclass(frozen=True)
class KeeperRound:
    renewed: int
    lost: int  # taken over by another owner while still in progress here


def keep_leases(ledger: Ledger, leases: LeaseRegistry, lease_seconds: float) -> KeeperRound:
    """One round: renew every held lease; stop renewing the ones no longer ours."""
    held = leases.held()
    if not held:
        return KeeperRound(0, 0)
    renewed = ledger.requests.renew_leases(held, lease_seconds)
    missed = [pair for pair in held if pair not in renewed]
    lost = sum(_taken_elsewhere(ledger, pair) for pair in leases.drop(missed))
    return KeeperRound(len(renewed), lost)


def _taken_elsewhere(ledger: Ledger, pair: Held) -> bool:
    """A lease not renewed was released or finished as its attempt ended (nothing to say), or
    another process holds it now (said once, at WARNING)."""
    request_id, owner = pair
    record = ledger.requests.get(request_id)
    holder = record.lease_owner if record is not None else None
    if holder is None or holder == owner:
        return False
    log.warning(
        "request %s: lease of %s was taken over by %s; no longer renewing it here",
        request_id,
        owner,
        holder,
    )
    return True


class LeaseKeeperStep(PeriodicStep):
    """Renews this process's leases in a background thread of every worker process."""

    thread_name = "lease-keeper"
    first_round_at_start = True

    def interval(self, runtime: Runtime) -> float:
        return runtime.settings.claim_lease_seconds / RENEWALS_PER_LEASE

    def run_round(self, runtime: Runtime) -> None:
        services = runtime.services()
        keep_leases(services.ledger, services.leases, runtime.settings.claim_lease_seconds)
