"""How fast a SIGKILLed worker's debits are resumed, measured by the fault run.

At each SIGKILL the harness waits for the process to be gone, then reads which open requests
it held (their unexpired lease names it: `host:pid:task`): the debits in flight at the kill.
Once the run is over, each one's audit trail says when another process next worked on it:
its next Stripe attempt (`attempt`, or `attempting` for one not begun yet) or its outcome,
by any actor but the dead one and the janitor (whose `requeued` entry is the take-over, not
an attempt). "Resumed after" counts from the kill when another worker process was alive,
else from the next worker start; "outcome after" from the same moment to its outcome.

The service promises a resume within RESUME_BOUND_SECONDS. A kill whose recovery overlapped
a broker or PostgreSQL restart (the harness's own, from 10 s before the kill to the resume)
is reported apart and not held to it: nothing can be resumed while the ledger or the task
queue is down.
"""

from __future__ import annotations

import math
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Final

from sqlalchemy import Engine, select

from worker.adapters.ledger.tables import Status, audit_log, debit_requests

RESUME_BOUND_SECONDS: Final = 15.0
# Audit actions that mean a process worked on the request again (janitor and reconciler
# entries are not attempts).
ATTEMPT_ACTIONS: Final = frozenset(
    {"attempt", "attempting", "succeeded", "failed", "needs_reconciliation"}
)
# An outcome, or the hand-over to reconciliation: the request is no longer in flight.
ENDED: Final = frozenset({"succeeded", "failed", "needs_reconciliation"})
OPEN: Final = (str(Status.RECEIVED), str(Status.ATTEMPTING))
OUTAGE_MARGIN: Final = timedelta(seconds=10)


@dataclass(frozen=True)
class Kill:
    at: datetime
    pid: int
    owner_prefix: str  # `host:pid:`, how its leases and audit entries name the process
    others_alive: bool
    in_flight: tuple[str, ...] | None  # None: the ledger could not be read at the kill


@dataclass(frozen=True)
class Resume:
    request_id: str
    kill: Kill
    since: datetime  # the kill, or the next worker start when none was alive
    resumed_at: datetime | None
    finished_at: datetime | None
    finished_by_the_dead: bool  # its outcome was committed as the process died: not resumed
    # The janitor's take-over (`requeued`): what the lease and the janitor cost, before the
    # re-enqueued attempt waits its turn among the surviving workers' tasks.
    taken_over_at: datetime | None = None

    @property
    def resumed_after(self) -> float | None:
        return None if self.resumed_at is None else (self.resumed_at - self.since).total_seconds()

    @property
    def taken_over_after(self) -> float | None:
        if self.taken_over_at is None:
            return None
        return (self.taken_over_at - self.since).total_seconds()

    @property
    def outcome_after(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - self.since).total_seconds()


@dataclass
class RecoveryWatch:
    """Fed by the chaos thread at each SIGKILL; read once the run is over."""

    engine: Engine
    # the workers' identity host (DEBIT_WORKER_HOST_NAME, else the machine's host name)
    host: str = field(default_factory=socket.gethostname)
    kills: list[Kill] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def killed(self, pid: int, at: datetime, *, others_alive: bool) -> None:
        """Call once the killed process has ended (nothing it held can change any more)."""
        prefix = f"{self.host}:{pid}:"
        c = debit_requests.c
        query = select(c.request_id).where(
            c.status.in_(OPEN), c.lease_owner.startswith(prefix), c.lease_until > at
        )
        try:
            with self.engine.connect() as conn:
                held = tuple(conn.execute(query).scalars())
        except Exception as exc:  # noqa: BLE001 - PostgreSQL may be restarting: unmeasured
            self.errors.append(f"kill of {pid}: ledger not readable ({type(exc).__name__})")
            held = None
        self.kills.append(Kill(at, pid, prefix, others_alive, held))

    def resumes(self, starts: Sequence[datetime]) -> list[Resume]:
        """Each in-flight request of each kill, with when it was resumed and finished."""
        wanted = {rid for kill in self.kills for rid in kill.in_flight or ()}
        if not wanted:
            return []
        trails, finished = _trails(self.engine, wanted)
        found = []
        for kill in self.kills:
            since = kill.at if kill.others_alive else _next_start(starts, kill.at)
            for rid in kill.in_flight or ():
                after = [e for e in trails.get(rid, []) if e[0] > kill.at]
                by_the_dead = any(
                    action in ENDED and actor.startswith(kill.owner_prefix)
                    for _, action, actor in after
                )
                resumed = next(
                    (
                        at
                        for at, action, actor in after
                        if action in ATTEMPT_ACTIONS
                        and actor != "janitor"
                        and not actor.startswith(kill.owner_prefix)
                    ),
                    None,
                )
                taken_over = next((at for at, action, actor in after if actor == "janitor"), None)
                found.append(
                    Resume(rid, kill, since, resumed, finished.get(rid), by_the_dead, taken_over)
                )
        return found


def _trails(
    engine: Engine, request_ids: set[str]
) -> tuple[dict[str, list[tuple[datetime, str, str]]], dict[str, datetime | None]]:
    a, c = audit_log.c, debit_requests.c
    trails: dict[str, list[tuple[datetime, str, str]]] = {}
    ordered = sorted(request_ids)
    with engine.connect() as conn:
        rows = conn.execute(
            select(a.entity_id, a.at, a.action, a.actor)
            .where(a.entity == "request", a.entity_id.in_(ordered))
            .order_by(a.id)
        )
        for rid, at, action, actor in rows:
            trails.setdefault(rid, []).append((at, action, actor))
        ends = conn.execute(select(c.request_id, c.finished_at).where(c.request_id.in_(ordered)))
        finished: dict[str, datetime | None] = {row.request_id: row.finished_at for row in ends}
    return trails, finished


def _next_start(starts: Sequence[datetime], after: datetime) -> datetime:
    later = [s for s in starts if s > after]
    return min(later) if later else after


def _percentile(values: list[float], share: float) -> float:
    """Nearest rank: the smallest value with at least `share` of them at or below it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


def _figures(values: list[float]) -> dict[str, float | int]:
    if not values:
        return {"count": 0}
    return {
        "count": len(values),
        "p50": round(_percentile(values, 0.50), 2),
        "p99": round(_percentile(values, 0.99), 2),
        "max": round(max(values), 2),
    }


def _overlaps(resume: Resume, outages: Sequence[tuple[datetime, datetime]]) -> bool:
    end = resume.resumed_at or resume.since + timedelta(seconds=RESUME_BOUND_SECONDS)
    start = resume.since - OUTAGE_MARGIN
    return any(down < end and up > start for down, up in outages)


def recovery_report(
    watch: RecoveryWatch,
    starts: Sequence[datetime],
    outages: Sequence[tuple[datetime, datetime]],
) -> tuple[dict[str, Any], list[str]]:
    """The report's `recovery` part, and its violations: an in-flight debit never resumed.
    How soon each was resumed is a figure against RESUME_BOUND_SECONDS (`over_bound`,
    `bound_met`), not a violation: a speed is measured and reported, never asserted, and it
    moves with the machine's load."""
    every = watch.resumes(starts)
    resumes = [r for r in every if not r.finished_by_the_dead]
    held: list[Resume] = []
    apart: list[Resume] = []
    for resume in resumes:
        (apart if _overlaps(resume, outages) else held).append(resume)
    violations = []
    for resume in held:
        after = resume.resumed_after
        if after is None:
            violations.append(
                f"{resume.request_id}: in flight at the kill of worker {resume.kill.pid}, "
                "never resumed"
            )
    report = {
        "bound_seconds": RESUME_BOUND_SECONDS,
        "sigkills": len(watch.kills),
        "sigkills_unmeasured": len([k for k in watch.kills if k.in_flight is None]),
        "sigkills_with_no_worker_alive": len([k for k in watch.kills if not k.others_alive]),
        "in_flight_at_kills": sum(len(k.in_flight or ()) for k in watch.kills),
        "finished_by_the_dead_process": len(every) - len(resumes),
        "resumed_after_seconds": _figures(_known([r.resumed_after for r in held])),
        "over_bound": sorted(
            f"{r.request_id}: resumed {r.resumed_after:.1f} s after the kill of worker {r.kill.pid}"
            for r in held
            if r.resumed_after is not None and r.resumed_after > RESUME_BOUND_SECONDS
        ),
        "bound_met": all(
            r.resumed_after is not None and r.resumed_after <= RESUME_BOUND_SECONDS for r in held
        ),
        "taken_over_after_seconds": _figures(_known([r.taken_over_after for r in held])),
        "outcome_after_seconds": _figures(_known([r.outcome_after for r in held])),
        "overlapping_restarts": {
            "resumed_after_seconds": _figures(_known([r.resumed_after for r in apart])),
        },
        "read_errors": watch.errors,
    }
    return report, violations


def _known(values: list[float | None]) -> list[float]:
    return [v for v in values if v is not None]
