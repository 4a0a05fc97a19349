"""The failure-code catalogue: every way a debit can be refused, as a stable machine code.

Codes are part of the public contract (v1): they are only ever added, never renamed or
removed. Each carries what it means and what the producer should do about it.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class FailureCode(StrEnum):
    INVALID_REQUEST = "invalid_request"
    ACCOUNT_NOT_FOUND = "account_not_found"
    ACCOUNT_INELIGIBLE = "account_ineligible"
    CONSENT_MISSING = "consent_missing"
    REGION_UNSUPPORTED = "region_unsupported"
    CURRENCY_MISMATCH = "currency_mismatch"
    AMOUNT_EXCEEDS_LIMIT = "amount_exceeds_limit"
    INSUFFICIENT_BALANCE = "insufficient_balance"
    REFUND_NOT_FOUND = "refund_not_found"
    REFUND_NOT_RECOVERABLE = "refund_not_recoverable"
    REFUND_ACCOUNT_MISMATCH = "refund_account_mismatch"
    REFUND_CURRENCY_MISMATCH = "refund_currency_mismatch"
    REFUND_REQUIRES_ACTION = "refund_requires_action"
    REFUND_RECOVERY_EXCEEDS_REFUND = "refund_recovery_exceeds_refund"
    IDEMPOTENCY_CONFLICT = "idempotency_conflict"
    STRIPE_REJECTED = "stripe_rejected"
    UNAUTHORIZED = "unauthorized"
    PRODUCER_LIMIT_EXCEEDED = "producer_limit_exceeded"
    NOT_EXECUTED = "not_executed"

    @property
    def retry_may_succeed(self) -> bool:
        """Whether a *new* request (new request_id) for the same debit could succeed later."""
        return CATALOGUE[self].retry_may_succeed


@dataclass(frozen=True, slots=True)
class CodeInfo:
    meaning: str
    producer_action: str
    retry_may_succeed: bool


CATALOGUE: dict[FailureCode, CodeInfo] = {
    FailureCode.INVALID_REQUEST: CodeInfo(
        meaning="The command does not match the DebitRequested schema; `field_errors` names "
        "each offending field.",
        producer_action="Fix the producer; resending the same bytes fails the same way.",
        retry_may_succeed=False,
    ),
    FailureCode.ACCOUNT_NOT_FOUND: CodeInfo(
        meaning="Stripe knows no connected account with this id, or it is not connected to "
        "this platform.",
        producer_action="Check the account id; do not retry with the same id.",
        retry_may_succeed=False,
    ),
    FailureCode.ACCOUNT_INELIGIBLE: CodeInfo(
        meaning="The platform is not liable for this account's negative balances "
        "(controller.losses.payments is not 'application', e.g. a Standard account), so "
        "Stripe does not allow debiting it.",
        producer_action="Bill this account another way (e.g. Stripe Billing).",
        retry_may_succeed=False,
    ),
    FailureCode.CONSENT_MISSING: CodeInfo(
        meaning="The platform holds no unrevoked record of the account's consent to be debited.",
        producer_action="Obtain and record consent (`debit-worker consent grant`), then send a "
        "new request.",
        retry_may_succeed=True,
    ),
    FailureCode.REGION_UNSUPPORTED: CodeInfo(
        meaning="Platform and account are neither in the same region nor in a supported "
        "cross-border corridor.",
        producer_action="Collect the funds another way, or ask Stripe to enable the corridor "
        "and update the worker's rule tables.",
        retry_may_succeed=False,
    ),
    FailureCode.CURRENCY_MISMATCH: CodeInfo(
        meaning="The debit's currency is not the account's default currency.",
        producer_action="Resend in the account's default currency.",
        retry_may_succeed=False,
    ),
    FailureCode.AMOUNT_EXCEEDS_LIMIT: CodeInfo(
        meaning="The amount is above the per-debit cap (100,000 USD or its configured "
        "equivalent), or the currency has no configured cap.",
        producer_action="Split the debit, or ask the operator to configure the currency.",
        retry_may_succeed=False,
    ),
    FailureCode.INSUFFICIENT_BALANCE: CodeInfo(
        meaning="The account's available balance in this currency is lower than the amount; "
        "Stripe never lets a debit make it negative.",
        producer_action="Send a new request later, when the balance has grown.",
        retry_may_succeed=True,
    ),
    FailureCode.REFUND_NOT_FOUND: CodeInfo(
        meaning="The refund named by a refund_recovery is unknown to Stripe.",
        producer_action="Check the refund id.",
        retry_may_succeed=False,
    ),
    FailureCode.REFUND_NOT_RECOVERABLE: CodeInfo(
        meaning="The refund named by a refund_recovery failed or was canceled, or Stripe "
        "reports a status other than succeeded, pending or requires_action: no money left the "
        "platform for it, so there is nothing to recover.",
        producer_action="Do not recover this refund; check the refund id.",
        retry_may_succeed=False,
    ),
    FailureCode.REFUND_ACCOUNT_MISMATCH: CodeInfo(
        meaning="The charge the refund refunded paid another connected account "
        "(transfer_data.destination, destination or on_behalf_of) than the account this "
        "recovery debits.",
        producer_action="Recover from the account the refunded charge paid; the message names it.",
        retry_may_succeed=False,
    ),
    FailureCode.REFUND_CURRENCY_MISMATCH: CodeInfo(
        meaning="The refund named by a refund_recovery is in another currency than the debit.",
        producer_action="Recover in the refund's currency.",
        retry_may_succeed=False,
    ),
    FailureCode.REFUND_REQUIRES_ACTION: CodeInfo(
        meaning="The refund named by a refund_recovery still requires action (Stripe status "
        "requires_action): no money has left the platform for it yet.",
        producer_action="Send a new request once Stripe reports the refund pending or succeeded.",
        retry_may_succeed=True,
    ),
    FailureCode.REFUND_RECOVERY_EXCEEDS_REFUND: CodeInfo(
        meaning="This recovery plus the recoveries already made or in flight for the same "
        "refund would exceed the refunded amount.",
        producer_action="Recover at most the remainder; in-flight recoveries may still fail "
        "and free room.",
        retry_may_succeed=True,
    ),
    FailureCode.IDEMPOTENCY_CONFLICT: CodeInfo(
        meaning="A request with this request_id was already received with different content.",
        producer_action="Use a new request_id for a different debit; never reuse one.",
        retry_may_succeed=False,
    ),
    FailureCode.STRIPE_REJECTED: CodeInfo(
        meaning="Stripe refused the debit for another permanent reason; `stripe_error` "
        "carries Stripe's type, code and request id.",
        producer_action="Read stripe_error.code; contact the operator if it is unclear.",
        retry_may_succeed=False,
    ),
    FailureCode.UNAUTHORIZED: CodeInfo(
        meaning="The command is not signed, or not by an active key of a known producer, or "
        "was altered after signing, or its signature is older than the worker's window. "
        "Nothing was recorded: the request_id is not used up, and this event says nothing "
        "about any other command with the same request_id.",
        producer_action="Sign with an active key of your producer (docs/contract.md, Signing "
        "commands) and publish again, with a fresh timestamp and the same request_id.",
        retry_may_succeed=False,
    ),
    FailureCode.PRODUCER_LIMIT_EXCEEDED: CodeInfo(
        meaning="The producer may not use this reason, or the amount is above the producer's "
        "per-debit maximum, or the producer's debits in this currency over the last 24 hours "
        "plus this one would exceed its daily maximum.",
        producer_action="Stay within your producer's policy; daily room frees up as "
        "earlier debits leave the 24-hour window, or ask the operator to change the policy.",
        retry_may_succeed=True,
    ),
    FailureCode.NOT_EXECUTED: CodeInfo(
        meaning="Stripe's answer to the debit was lost or unclear, and Stripe's own records "
        "(its Events and its charges list over the request's attempt window, after a grace "
        "for late execution) hold no charge for it: the debit was not carried out. Settled "
        "by the reconciler, or by an operator who checked Stripe.",
        producer_action="Send a new request (new request_id) if the debit is still owed.",
        retry_may_succeed=True,
    ),
}
