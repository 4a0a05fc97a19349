"""The story of one debit: claim → policy → Stripe → record → publish.

Every step is idempotent, so a redelivered or retried command carries on from what the
ledger says happened, and never moves money twice:
- a request already finished re-emits its recorded event, with no Stripe call;
- once the ledger says ``attempting``, the policy is never asked again: the next attempt
  repeats the same Stripe call with the same idempotency key;
- transient and unknown outcomes propagate to the attempt engine, which retries later.

Two workers never charge one request at once. A claim is a short lease, renewed while the
attempt runs (worker/ops/lease_keeper.py), and Stripe is called only after the ledger counted
the attempt *while this owner still held an unexpired lease* (begin_attempt, count_attempt:
the fence); otherwise the attempt stops as busy. A process that stalls past its lease after
the fence (a long pause mid-call) may still be inside its Stripe call when another worker
resumes the request; both calls carry the same idempotency key, so Stripe carries out one
and answers the other with that one's result, or with 409 `idempotency_key_in_use` while it
runs (KeyInUse: retried shortly, never a failure). Whoever records first wins, under status
guards: a success names the key's one payment, a Stripe refusal is the key's stored answer,
and a refusal by the rules is recorded only while no attempt has begun (`unattempted`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

from schemas.codes import FailureCode
from schemas.commands import DebitRequested
from schemas.events import (
    FAILED_TYPE,
    SUCCEEDED_TYPE,
    DebitFailed,
    DebitSucceeded,
    StripeErrorInfo,
    event_id,
    failed_event,
    succeeded_event,
)
from schemas.topology import FAILED_ROUTING_KEY, SUCCEEDED_ROUTING_KEY
from worker.adapters.ledger import (
    ClaimKind,
    Ledger,
    ProducerLimitExceeded,
    RecoveryBudgetExceeded,
    Status,
    Success,
)
from worker.adapters.ledger.database import LEDGER_UNAVAILABLE
from worker.adapters.ledger.outbox_store import RecordedOutcome
from worker.adapters.ledger.records import RequestRecord
from worker.adapters.ledger.tables import TERMINAL
from worker.domain.decision import Refusal, evaluate
from worker.domain.errors import (
    PermanentFailure,
    RefusalNotRecorded,
    RequestBusy,
    Unclaimed,
    Unresolvable,
)
from worker.domain.money import format_amount
from worker.domain.ports import Outbound, StripePort, StripeRecords
from worker.domain.producer_limits import ProducerPolicy, daily_limit, static_refusal
from worker.domain.rule_tables import RuleTables
from worker.domain.types import DebitCharge, OutboxEvent, idempotency_key
from worker.ops import metrics
from worker.ops.crashpoints import crash_point
from worker.ops.observability import log_context, report_unauthorized
from worker.transport.admission import Admission, Admitted, Invalid, Refused, admit
from worker.transport.authentication import Authenticator, Verified
from worker.transport.leases import LeaseRegistry
from worker.transport.parsing import InvalidCommand

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HandlerConfig:
    consent_required: bool = True
    balance_precheck: bool = False
    lease_seconds: float = 9.0
    # Stripe keeps idempotency keys 24 h: past this age of the first attempt, never call again.
    key_escalation_after_seconds: float = 20 * 3600.0
    event_source: str = "urn:debit-worker"


@dataclass(frozen=True)
class Services:
    ledger: Ledger
    stripe: StripePort
    # The one way out for recorded events: the event pump on RabbitMQ (event_pump.py), a
    # publish on the worker thread on the embedded broker (publisher.PublishingOutbound).
    outbound: Outbound
    rules: RuleTables
    config: HandlerConfig
    clock: Callable[[], datetime]
    auth: Authenticator
    # Stripe's own records, for the reconciler (the real gateway, without the read cache).
    records: StripeRecords | None = None
    # The leases this process holds while their attempts run, renewed by the lease keeper.
    leases: LeaseRegistry = field(default_factory=LeaseRegistry)
    # Opens the Stripe HTTP pool's connections (the warm-up does, as a process starts);
    # returns how many are open. None with a Stripe port of a test's own.
    open_stripe_connections: Callable[[], int] | None = None

    def require_records(self) -> StripeRecords:
        if self.records is None:
            raise RuntimeError("these services were built without Stripe's records")
        return self.records


class Result(StrEnum):
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    REEMITTED = "reemitted"  # a finished request seen again: its event was sent again
    CONFLICT = "conflict"


def handle_debit_requested(
    body: bytes | str, svc: Services, owner: str, headers: Mapping[str, str] | None = None
) -> Result:
    """A message's first attempt: admitted once (worker/transport/admission.py), then handled.
    Raises Undeliverable (dead-letter it), TransientFailure (retry later), or returns."""
    raw = body.encode("utf-8") if isinstance(body, str) else body
    return handle_admission(admit(raw, headers or {}, svc.auth, svc.clock()), svc, owner)


def handle_admission(admission: Admission, svc: Services, owner: str) -> Result:
    """An unauthorised command is answered with DebitFailed(unauthorized) and never claimed
    in the ledger nor shown to Stripe, unless it is a copy of a request already claimed."""
    if isinstance(admission, Invalid):
        _emit_invalid(admission.error, svc)
        return Result.FAILED
    if isinstance(admission, Admitted):
        return _Debit(admission.command, svc, owner, admission.producer).run()
    try:
        claimed = admission.command is not None and _claimed(admission.command, svc)
        if not claimed:
            _emit_unauthorized(admission, svc)
            return Result.FAILED
    except LEDGER_UNAVAILABLE as exc:
        raise RefusalNotRecorded(f"unauthorized ({admission.refusal.reason}); {exc}") from exc
    # Only authenticated commands are claimed, so the same content under a claim was
    # authenticated once, and its producer is stored with the claim: its policy applies
    # (_Debit._policy). Carrying on (resuming it, or re-emitting its outcome) moves no more
    # money than that command asked for, whereas refusing would give the request a second
    # outcome: a redelivery past the signature window, a key retired mid-attempt, a replay.
    log.warning(
        "request %s: %s; continuing its claim", admission.request_id, admission.refusal.reason
    )
    return resume(admission.request_id, svc, owner)


def resume(request_id: str, svc: Services, owner: str) -> Result:
    """A later attempt, or the janitor's: the command, its producer and its state all come
    from the ledger."""
    record = svc.ledger.requests.get(request_id)
    if record is None:
        raise Unclaimed(request_id)
    command = DebitRequested.model_validate(record.command)
    with log_context(producer=record.producer):
        return _Debit(command, svc, owner, None).run()


class _Debit:
    def __init__(
        self, command: DebitRequested, svc: Services, owner: str, producer: Verified | None
    ) -> None:
        self.command = command
        self.svc = svc
        self.owner = owner
        self.producer = producer
        self.requests = svc.ledger.requests

    def run(self) -> Result:
        claim = self.requests.claim(
            self.command,
            self.owner,
            self.svc.config.lease_seconds,
            self.producer.producer if self.producer else None,
        )
        if claim.kind is ClaimKind.CONFLICT:
            return self._conflict(claim.record.received_at)
        if claim.kind is ClaimKind.FINISHED:
            log.info(
                "request %s already %s; re-emitting its event",
                claim.record.request_id,
                claim.record.status,
            )
            _reemit(self.command.request_id, claim.record.status, self.svc)
            metrics.debit_reemitted()
            return Result.REEMITTED
        if claim.kind is ClaimKind.BUSY:
            held = claim.record.lease_until
            raise RequestBusy(
                f"request {self.command.request_id} is being handled elsewhere",
                retry_after=(held - self.svc.clock()).total_seconds() if held else None,
            )
        with self.svc.leases.holding(self.command.request_id, self.owner):
            return self._attempt(claim.record)

    def _attempt(self, record: RequestRecord) -> Result:
        """A claimed request's attempt, its lease renewed meanwhile."""
        if record.idempotency_key is None:  # Stripe never asked: the rules decide
            try:
                attempt = self._decide_and_begin(record.producer)  # counts attempt 1
            except PermanentFailure as failure:
                return self._fail(
                    failure.code, failure.message, failure.stripe_error, unattempted=True
                )
        else:
            self._refuse_expiring_key(record.first_attempt_at)
            counted = self.requests.count_attempt(self.command.request_id, self.owner)
            if counted is None:  # our lease ran out and another took it: no Stripe call
                raise RequestBusy(
                    f"request {self.command.request_id} was taken over by another worker"
                )
            attempt = counted
        return self._charge(attempt)

    def _refuse_expiring_key(self, first_attempt_at: datetime | None) -> None:
        """Repeating the call is safe only while Stripe keeps the key (24 h); past the
        configured age the outcome must be reconciled by a person, never guessed."""
        limit = timedelta(seconds=self.svc.config.key_escalation_after_seconds)
        if first_attempt_at is not None and self.svc.clock() - first_attempt_at >= limit:
            raise Unresolvable(
                f"request {self.command.request_id}: first Stripe attempt at "
                f"{first_attempt_at.isoformat()}; its idempotency key is near or past Stripe's "
                "24 h expiry, so it is not sent again"
            )

    def _policy(self, claimed_by: str | None) -> tuple[str, ProducerPolicy] | None:
        """The policy of the producer that claimed the request, whoever resumes it (a
        retry, the janitor, a redelivery past the signature window); None: claimed
        unsigned, with signatures optional."""
        if claimed_by is not None:
            return claimed_by, self.svc.auth.policy_of(claimed_by)
        if self.producer is not None:
            return self.producer.producer, self.producer.policy
        return None

    def _decide_and_begin(self, claimed_by: str | None) -> int:
        """The rules, then received → attempting; returns the number of the attempt about to
        be made (counted by begin_attempt)."""
        cmd, stripe, ledger = self.command, self.svc.stripe, self.svc.ledger
        daily = None
        producer = self._policy(claimed_by)
        if producer is not None:
            name, policy = producer
            refused = static_refusal(name, policy, cmd)
            if refused is not None:
                raise PermanentFailure(FailureCode.PRODUCER_LIMIT_EXCEEDED, refused)
            daily = daily_limit(name, policy, cmd.currency)
        now = self.svc.clock()
        account = stripe.account(cmd.account)
        refund = stripe.refund(cmd.refund) if cmd.refund else None
        decision = evaluate(
            cmd,
            platform=stripe.platform(),
            account=account,
            consent=ledger.consents.active(cmd.account, now),
            refund=refund,
            recovered_for_refund=ledger.requests.reserved_for_refund(cmd.refund)
            if cmd.refund
            else 0,
            available_balance=stripe.available_balance(cmd.account, cmd.currency)
            if self.svc.config.balance_precheck
            else None,
            rules=self.svc.rules,
            consent_required=self.svc.config.consent_required,
            now=now,
        )
        if isinstance(decision, Refusal):
            raise PermanentFailure(decision.code, decision.message)
        try:
            began = self.requests.begin_attempt(
                cmd.request_id, self.owner, idempotency_key(cmd.request_id), refund, daily
            )
        except ProducerLimitExceeded as exceeded:
            left = max(0, exceeded.limit.limit - exceeded.used)
            raise PermanentFailure(
                FailureCode.PRODUCER_LIMIT_EXCEEDED,
                f"producer {exceeded.limit.producer} has "
                f"{format_amount(left, cmd.currency)} of its daily maximum of "
                f"{format_amount(exceeded.limit.limit, cmd.currency)} left in the last 24 "
                f"hours; this debit asks for {format_amount(cmd.amount, cmd.currency)}",
            ) from None
        except RecoveryBudgetExceeded as exceeded:
            remaining = max(0, exceeded.refunded - exceeded.reserved)
            raise PermanentFailure(
                FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND,
                f"refund {cmd.refund} has {format_amount(remaining, cmd.currency)} left to "
                f"recover; this debit asks for {format_amount(cmd.amount, cmd.currency)}",
            ) from None
        if began is None:  # the fence: our lease ran out, or another worker took it over
            raise RequestBusy(f"request {cmd.request_id} was taken over by another worker")
        return began

    def _charge(self, attempt: int) -> Result:
        """One Stripe attempt, already counted in the ledger as number `attempt`."""
        cmd = self.command
        log.info("request %s: Stripe attempt %d", cmd.request_id, attempt)
        try:
            payment = self.svc.stripe.create_debit(
                DebitCharge(
                    request_id=cmd.request_id,
                    account=cmd.account,
                    amount=cmd.amount,
                    currency=cmd.currency,
                    reason=str(cmd.reason),
                    refund=cmd.refund,
                    description=cmd.description,
                    metadata=cmd.metadata,
                )
            )
        except PermanentFailure as failure:
            crash_point("after_stripe")
            return self._fail(failure.code, failure.message, failure.stripe_error)
        crash_point("after_stripe")
        success = Success(
            payment.id, payment.transfer, payment.balance_transaction, charged_at=payment.created
        )
        event = succeeded_outcome(cmd, success, payment.created, self.svc.config.event_source)
        row_id = self.requests.record_succeeded(cmd.request_id, self.owner, success, event)
        crash_point("after_record")
        log.info(
            "request %s succeeded: %s from %s, payment %s%s",
            cmd.request_id,
            format_amount(cmd.amount, cmd.currency),
            cmd.account,
            payment.id,
            " (replayed by Stripe)" if payment.replayed else "",
            extra={"outcome": "succeeded"},
        )
        self._publish_outcome(row_id, event, None)
        crash_point("after_publish")
        return Result.SUCCEEDED

    def _fail(
        self,
        code: FailureCode,
        message: str,
        stripe_error: StripeErrorInfo | None,
        *,
        unattempted: bool = False,
    ) -> Result:
        """`unattempted`: refused before any Stripe call (by the rules, or a read); recorded
        only while no attempt has begun, since another worker that took the lease over
        meanwhile may be charging it."""
        cmd = self.command
        at = self.svc.clock()  # the event's failed_at and the row's finished_at, alike
        event = failed_outcome(cmd, code, message, stripe_error, at, self.svc.config.event_source)
        row_id = self.requests.record_failed(
            cmd.request_id,
            self.owner,
            code=code,
            message=message,
            stripe_error=stripe_error.model_dump(mode="json") if stripe_error else None,
            event=event,
            unattempted=unattempted,
            at=at,
        )
        if row_id is None and unattempted and not self._finished():
            raise RequestBusy(f"request {cmd.request_id} was taken over by another worker")
        crash_point("after_record")
        log.info(
            "request %s refused: %s: %s",
            cmd.request_id,
            code,
            message,
            extra={"outcome": "failed", "code": code},
        )
        self._publish_outcome(row_id, event, code)
        crash_point("after_publish")
        return Result.FAILED

    def _finished(self) -> bool:
        record = self.requests.get(self.command.request_id)
        return record is not None and record.status in TERMINAL

    def _publish_outcome(
        self, row_id: int | None, event: OutboxEvent, code: FailureCode | None
    ) -> None:
        """Publish the event just recorded with the outcome (outbox row `row_id`; `code`
        None: a success) without reading the outbox back. None: another worker recorded the
        outcome first, so send whatever of this request is still unsent instead."""
        if row_id is None:
            _publish_recorded(self.command.request_id, self.svc)
            return
        metrics.debit_outcome(code)
        self.svc.outbound.send(row_id, event)

    def _conflict(self, first_seen: datetime) -> Result:
        cmd = self.command
        data = failed_data(
            cmd,
            self.svc.clock(),
            FailureCode.IDEMPOTENCY_CONFLICT,
            f"request_id {cmd.request_id} was first received at {first_seen.isoformat()} with "
            "different content; this command is ignored and the first one stands",
        )
        event = failed_event(
            data, source=self.svc.config.event_source, variant=f"conflict:{cmd.fingerprint()}"
        )
        if self.svc.ledger.outbox.add(OutboxEvent.of(event, FAILED_ROUTING_KEY)):
            metrics.debit_outcome(FailureCode.IDEMPOTENCY_CONFLICT)
        log.warning(
            "request %s: idempotency conflict; the first command stands",
            cmd.request_id,
            extra={"outcome": "failed", "code": FailureCode.IDEMPOTENCY_CONFLICT},
        )
        _publish_recorded(cmd.request_id, self.svc)
        return Result.CONFLICT


def _emit_invalid(invalid: InvalidCommand, svc: Services) -> None:
    data = DebitFailed(
        request_id=invalid.request_id,
        **invalid.partial,
        code=FailureCode.INVALID_REQUEST,
        message=f"the command is not a valid DebitRequested: {invalid}",
        retry_may_succeed=False,
        field_errors=list(invalid.field_errors),
        failed_at=svc.clock(),
    )
    digest = "|".join(f"{e.field}={e.message}" for e in invalid.field_errors)
    event = failed_event(data, source=svc.config.event_source, variant=f"invalid:{digest}")
    if svc.ledger.outbox.add(OutboxEvent.of(event, FAILED_ROUTING_KEY)):
        metrics.debit_outcome(FailureCode.INVALID_REQUEST)
    log.info(
        "request %s is invalid: %s",
        invalid.request_id,
        invalid,
        extra={"outcome": "failed", "code": FailureCode.INVALID_REQUEST},
    )
    _publish_recorded(invalid.request_id, svc)


def _claimed(command: DebitRequested, svc: Services) -> bool:
    record = svc.ledger.requests.get(command.request_id)
    return record is not None and record.fingerprint == command.fingerprint()


def _emit_unauthorized(refused: Refused, svc: Services) -> None:
    """Answer the (unverified) request id, record nothing else, and alert."""
    request_id, reason = refused.request_id, refused.refusal.reason
    data = DebitFailed(
        request_id=request_id,
        **refused.echoed,
        code=FailureCode.UNAUTHORIZED,
        message=f"the command was refused: {reason}",
        retry_may_succeed=FailureCode.UNAUTHORIZED.retry_may_succeed,
        failed_at=svc.clock(),
    )
    variant = f"unauthorized:{refused.digest}:{reason}"
    event = failed_event(data, source=svc.config.event_source, variant=variant)
    if svc.ledger.outbox.add(OutboxEvent.of(event, FAILED_ROUTING_KEY)):
        metrics.debit_outcome(FailureCode.UNAUTHORIZED)
    log.warning(
        "request %s refused as unauthorized: %s",
        request_id,
        reason,
        extra={"outcome": "failed", "code": FailureCode.UNAUTHORIZED},
    )
    report_unauthorized(request_id, reason, refused.refusal.producer, refused.refusal.key_id)
    _publish_recorded(request_id, svc)


def succeeded_outcome(
    cmd: DebitRequested, success: Success, succeeded_at: datetime, source: str
) -> OutboxEvent:
    """The DebitSucceeded event of a request, whoever records the success (an attempt, the
    reconciler, an operator)."""
    data = DebitSucceeded(
        **cmd.model_dump(exclude={"requested_at"}),
        payment=success.payment_id,
        transfer=success.transfer_id,
        balance_transaction=success.balance_transaction,
        succeeded_at=succeeded_at,
    )
    return OutboxEvent.of(succeeded_event(data, source=source), SUCCEEDED_ROUTING_KEY)


def failed_data(
    cmd: DebitRequested,
    at: datetime,
    code: FailureCode,
    message: str,
    stripe_error: StripeErrorInfo | None = None,
) -> DebitFailed:
    return DebitFailed(
        request_id=cmd.request_id,
        account=cmd.account,
        amount=cmd.amount,
        currency=cmd.currency,
        reason=str(cmd.reason),
        refund=cmd.refund,
        code=code,
        message=message,
        retry_may_succeed=code.retry_may_succeed,
        stripe_error=stripe_error,
        failed_at=at,
    )


def failed_outcome(  # noqa: PLR0917 - each is one field of the event
    cmd: DebitRequested,
    code: FailureCode,
    message: str,
    stripe_error: StripeErrorInfo | None,
    at: datetime,
    source: str,
) -> OutboxEvent:
    """The DebitFailed event of a request's recorded failure, whoever records it."""
    data = failed_data(cmd, at, code, message, stripe_error)
    return OutboxEvent.of(failed_event(data, source=source), FAILED_ROUTING_KEY)


def outcome_event(outcome: RecordedOutcome, source: str) -> OutboxEvent | None:
    """A finished request's event built again from its row, the same id and body as the one
    recorded with the outcome: a success's time is its charge's `created` (charged_at), a
    failure's its finished_at. None: the row lacks what the event says."""
    cmd = DebitRequested.model_validate(outcome.command)
    if outcome.status == Status.SUCCEEDED:
        at = outcome.charged_at
        if outcome.payment_id is None or at is None:
            return None
        paid = Success(outcome.payment_id, outcome.transfer_id, outcome.balance_transaction, at)
        return succeeded_outcome(cmd, paid, at, source)
    if outcome.failure_code is None:
        return None
    error = StripeErrorInfo.model_validate(outcome.stripe_error) if outcome.stripe_error else None
    code, message = FailureCode(outcome.failure_code), outcome.failure_message or ""
    return failed_outcome(cmd, code, message, error, outcome.finished_at, source)


def _reemit(request_id: str, status: Status, svc: Services) -> None:
    """A finished request's outcome event again, with whatever of it is unsent. Once the
    retention has removed the sent event from the outbox, it is built again from the row and
    recorded anew (then sent, and left to the relay if that fails)."""
    source = svc.config.event_source
    kind = SUCCEEDED_TYPE if status is Status.SUCCEEDED else FAILED_TYPE
    resend = event_id(source, request_id, kind)
    if _publish_recorded(request_id, svc, resend):
        return
    outcome = svc.ledger.outbox.recorded_outcome(request_id)
    event = None if outcome is None else outcome_event(outcome, source)
    if event is None:
        log.warning("request %s: no event to re-emit (its row lacks the outcome)", request_id)
        return
    svc.ledger.outbox.add(event)
    _publish_recorded(request_id, svc, resend)


def _publish_recorded(request_id: str, svc: Services, resend: str | None = None) -> bool:
    """Send the request's unsent events (and the event `resend` again, sent or not); what
    cannot be sent now stays in the outbox for the relay. True: `resend` was there."""
    found = False
    for pending in svc.ledger.outbox.for_request(request_id):
        again = pending.event.event_id == resend
        found = found or again
        if not pending.sent or again:
            svc.outbound.send(pending.row_id, pending.event)
    return found
