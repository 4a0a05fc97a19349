"""The only place Stripe is called, and where Stripe's errors are sorted by what happens next.

Account debits are `POST /v1/charges` with `source=acct_…`, always with an idempotency key
derived from the request id alone, so a retry or redelivery can never move money twice.
A 200 is a success only when its charge is the money asked for, settled: anything else is
never reported as a payment.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Final

import stripe

from schemas.codes import FailureCode
from schemas.events import StripeErrorInfo
from worker.adapters.rate_budget import RateBudget
from worker.domain.errors import (
    ChargePending,
    DebitWorkerError,
    OperatorActionNeeded,
    OutcomeUnknown,
    PermanentFailure,
    TransientFailure,
    Unresolvable,
)
from worker.domain.types import (
    AccountFacts,
    DebitCharge,
    Payment,
    PlatformFacts,
    RefundFacts,
    idempotency_key,
)

log = logging.getLogger(__name__)


def charge_params(charge: DebitCharge) -> dict[str, Any]:
    """The body of `POST /v1/charges` for one debit: the account is the source."""
    metadata = {**charge.metadata, "request_id": charge.request_id, "reason": charge.reason}
    if charge.refund:
        metadata["refund"] = charge.refund
    params: dict[str, Any] = {
        "amount": charge.amount,
        "currency": charge.currency,
        "source": charge.account,
        "metadata": metadata,
    }
    if charge.description:
        params["description"] = charge.description
    return params


def error_info(err: stripe.StripeError) -> StripeErrorInfo:
    detail = err.error
    return StripeErrorInfo(
        type=(detail.type if detail is not None and detail.type else type(err).__name__),
        code=detail.code if detail is not None else None,
        decline_code=detail.decline_code if detail is not None else None,
        message=detail.message if detail is not None else None,
        request_id=err.request_id,
    )


def _header_true(err: stripe.StripeError, name: str) -> bool:
    return (err.headers or {}).get(name) == "true"


def _retry_after(err: stripe.StripeError) -> float | None:
    value = (err.headers or {}).get("retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


# One early return per kind of Stripe error reads better than a table of predicates.
def classify(err: stripe.StripeError, *, effectful: bool) -> DebitWorkerError:  # noqa: PLR0911
    """Sort a Stripe error: permanent, transient, outcome unknown, or the operator's problem.

    `effectful` says whether the call could have moved money (a POST); for reads an
    unanswered call is merely transient.
    """
    info = error_info(err)
    code = info.code
    unknown = OutcomeUnknown if effectful else TransientFailure
    if effectful and _header_true(err, "idempotent-replayed") and (err.http_status or 0) >= 500:
        # Stripe stored this error under our key and replays it for 24 h: no repeat can
        # tell whether money moved. An operator must look.
        return Unresolvable(
            f"Stripe replays a stored error {err.http_status} ({code}) for this key"
        )
    if _header_true(err, "stripe-should-retry"):
        return unknown(f"Stripe asked for a retry ({info.type}/{code})")
    if isinstance(err, stripe.RateLimitError):
        return TransientFailure(f"Stripe rate limit ({code})", retry_after=_retry_after(err))
    if isinstance(err, stripe.APIConnectionError):
        return unknown(f"no answer from Stripe: {err.user_message or err}")
    if isinstance(err, stripe.IdempotencyError):
        # Our key with other parameters: the first use may have moved money. Never guess.
        return OutcomeUnknown(f"Stripe idempotency error: {info.message}")
    if isinstance(err, stripe.AuthenticationError | stripe.PermissionError):
        if code == "account_invalid":
            return PermanentFailure(
                FailureCode.ACCOUNT_NOT_FOUND,
                "Stripe says the account is not connected to this platform",
                stripe_error=info,
            )
        return OperatorActionNeeded(
            f"Stripe refused the worker's credentials ({type(err).__name__}: {info.message})"
        )
    if isinstance(err, stripe.CardError | stripe.InvalidRequestError):
        return _permanent(info, getattr(err, "param", None))
    if isinstance(err, stripe.APIError):  # 409 and 5xx
        return unknown(f"Stripe error {err.http_status} ({code})")
    return unknown(f"unexpected Stripe error {type(err).__name__} ({code})")


def _permanent(info: StripeErrorInfo, param: str | None) -> PermanentFailure:
    if info.code == "balance_insufficient":
        return PermanentFailure(
            FailureCode.INSUFFICIENT_BALANCE,
            "Stripe refused: the account's available balance is lower than the amount",
            stripe_error=info,
        )
    if info.code in {"resource_missing", "account_invalid"} and param == "source":
        return PermanentFailure(
            FailureCode.ACCOUNT_NOT_FOUND,
            f"Stripe knows no such account: {info.message}",
            stripe_error=info,
        )
    return PermanentFailure(
        FailureCode.STRIPE_REJECTED,
        f"Stripe refused the debit ({info.code or info.type}): {info.message}",
        stripe_error=info,
    )


def _not_found(failure: PermanentFailure, code: FailureCode, what: str) -> PermanentFailure:
    """A read Stripe refused permanently: the object is not there for us."""
    said = failure.stripe_error.message if failure.stripe_error else failure.message
    return PermanentFailure(
        code, f"Stripe has no {what} ({said})", stripe_error=failure.stripe_error
    )


def _epoch(value: object) -> datetime:
    return datetime.fromtimestamp(int(str(value)), UTC) if value else datetime.now(UTC)


def _id_of(value: object) -> str | None:
    """Expandable fields come back as an id or as an object with one."""
    if value is None or isinstance(value, str):
        return value
    found = getattr(value, "id", None)
    if found is None and isinstance(value, Mapping):
        found = value.get("id")
    return str(found) if found else None


# Fields of a charge that name the connected account it paid: `transfer_data.destination`
# (destination charges), `destination` (its name in older API versions, still read in case an
# answer carries it) and `on_behalf_of` (the account the charge settled for).
CHARGE_ACCOUNT_FIELDS: Final = ("transfer_data.destination", "destination", "on_behalf_of")


def _field(obj: object, path: str) -> object:
    for part in path.split("."):
        obj = obj.get(part) if isinstance(obj, Mapping) else None
    return obj


def charge_accounts(charge: object) -> tuple[tuple[str, str], ...]:
    """(field, account id) for each field of an expanded charge that names an account."""
    if not isinstance(charge, Mapping):
        return ()
    named = ((path, _id_of(_field(charge, path))) for path in CHARGE_ACCOUNT_FIELDS)
    return tuple((path, account) for path, account in named if account)


def _charge_differences(asked: DebitCharge, charge: Mapping[str, Any]) -> list[str]:
    """How the charge Stripe answered differs from the debit asked for, in words."""
    found = []
    amount = charge.get("amount")
    if type(amount) is not int or amount != asked.amount:
        found.append(f"amount {amount!r} (asked {asked.amount})")
    currency = charge.get("currency")
    if not isinstance(currency, str) or currency.lower() != asked.currency.lower():
        found.append(f"currency {currency!r} (asked {asked.currency!r})")
    source = _id_of(charge.get("source"))
    if source != asked.account:
        found.append(f"source {source!r} (asked {asked.account!r})")
    return found


def verified_payment(asked: DebitCharge, charge: Mapping[str, Any], *, replayed: bool) -> Payment:
    """The Payment in Stripe's answer, if it is the debit asked for and it succeeded.

    `pending` raises ChargePending (the outcome is not known yet); any other status, an
    unpaid charge, or an amount, currency or source other than asked raises Unresolvable.
    Both escalate: money that may not have moved is never reported as a success.
    """
    charge_id = charge.get("id")
    status = charge.get("status")
    problems = _charge_differences(asked, charge)
    if not isinstance(charge_id, str) or not charge_id:
        problems.append("no charge id")
    if status == "pending" and not problems:
        raise ChargePending(
            f"request {asked.request_id}: Stripe answered charge {charge_id} with status "
            "'pending': whether the money moves is not decided yet; read the charge later to "
            "settle the request",
            charge_id=str(charge_id),
        )
    if status != "succeeded":
        problems.insert(0, f"status {status!r}, not 'succeeded'")
    elif charge.get("paid") is not True:
        problems.append(f"paid {charge.get('paid')!r}, not true")
    if problems:
        raise Unresolvable(
            f"request {asked.request_id}: Stripe's answer (charge {charge_id}) is not a "
            f"succeeded debit as asked for: {'; '.join(problems)}; an operator must reconcile it"
        )
    return Payment(
        id=str(charge_id),
        transfer=_id_of(charge.get("source_transfer")),
        balance_transaction=_id_of(charge.get("balance_transaction")),
        created=_epoch(charge.get("created")),
        replayed=replayed,
    )


class StripeGateway:
    def __init__(self, client: stripe.StripeClient, budget: RateBudget) -> None:
        self._client = client
        self._budget = budget

    def platform(self) -> PlatformFacts:
        account = self._read(self._client.v1.accounts.retrieve_current)
        return PlatformFacts(account_id=account.id, country=str(account.country).upper())

    def account(self, account_id: str) -> AccountFacts:
        try:
            account = self._read(self._client.v1.accounts.retrieve, account_id)
        except PermanentFailure as failure:
            raise _not_found(
                failure, FailureCode.ACCOUNT_NOT_FOUND, f"account {account_id} for this platform"
            ) from failure
        raw = account.to_dict()
        controller = raw.get("controller") or {}
        losses = controller.get("losses") or {}
        return AccountFacts(
            account_id=account.id,
            country=str(raw.get("country") or "").upper(),
            default_currency=str(raw.get("default_currency") or "").lower(),
            type=raw.get("type"),
            losses_payments=losses.get("payments"),
        )

    def refund(self, refund_id: str) -> RefundFacts:
        try:
            # The refunded charge comes expanded in the same request: which account it paid.
            refund = self._read(
                self._client.v1.refunds.retrieve, refund_id, params={"expand": ["charge"]}
            )
        except PermanentFailure as failure:
            raise _not_found(
                failure, FailureCode.REFUND_NOT_FOUND, f"refund {refund_id}"
            ) from failure
        raw = refund.to_dict()
        charge = raw.get("charge")
        return RefundFacts(
            refund_id=refund.id,
            amount=int(refund.amount),
            currency=str(refund.currency).lower(),
            status=str(raw.get("status") or "unknown"),
            charge_id=_id_of(charge),
            charge_accounts=charge_accounts(charge),
        )

    def available_balance(self, account_id: str, currency: str) -> int:
        balance = self._read(
            self._client.v1.balance.retrieve, options={"stripe_account": account_id}
        )
        return sum(int(item.amount) for item in balance.available if item.currency == currency)

    def create_debit(self, charge: DebitCharge) -> Payment:
        self._budget.acquire()
        try:
            # The SDK's raw request: the same encoding, authentication, retries and error
            # objects as `charges.create`, without building a StripeObject tree of the whole
            # charge (a fifth of the worker's CPU per debit) for the four fields read here.
            response = self._client.raw_request(
                "post",
                "/v1/charges",
                **charge_params(charge),
                idempotency_key=idempotency_key(charge.request_id),
            )
        except stripe.StripeError as err:
            raise classify(err, effectful=True) from err
        return verified_payment(
            charge,
            response.data,
            replayed=(response.headers or {}).get("idempotent-replayed") == "true",
        )

    def _read(self, call: Any, *args: Any, **kwargs: Any) -> Any:
        self._budget.acquire()
        try:
            return call(*args, **kwargs)
        except stripe.StripeError as err:
            raise classify(err, effectful=False) from err
