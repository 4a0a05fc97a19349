"""The only place Stripe is called, and where Stripe's errors are sorted by what happens next.

Account debits are `POST /v1/charges` with `source=acct_…`, always with an idempotency key
derived from the request id alone, so a retry or redelivery can never move money twice.
A 200 is a success only when its charge is the money asked for, settled: anything else is
never reported as a payment.

Every call takes a token of the rate budget first, from Stripe's global limit and from its
endpoint's (`ENDPOINT_CLASS`): the charge at the debits' priority, the reads a debit waits for
(account, refund, balance) next, and Stripe's own records (one charge, the account-debit
charges and the charge Events of a time window), read for reconciliation, last. A 429 tells
the budget which limit Stripe enforced (`Stripe-Rate-Limited-Reason`), and it backs off.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from typing import Any, Final, TypeVar
from urllib.parse import quote

import stripe

from schemas.codes import FailureCode
from schemas.events import StripeErrorInfo
from worker.adapters.rate_budget import (
    Priority,
    RateBudget,
    effective_priority,
    endpoint_class,
)
from worker.backoff import retry_delay
from worker.domain.errors import (
    ChargePending,
    DebitWorkerError,
    KeyInUse,
    OperatorActionNeeded,
    OutcomeUnknown,
    PermanentFailure,
    TransientFailure,
    Unresolvable,
)
from worker.domain.types import (
    AccountFacts,
    ChargeSeen,
    DebitCharge,
    KeyedEvent,
    Payment,
    PlatformFacts,
    RefundFacts,
    idempotency_key,
)
from worker.ops import metrics

log = logging.getLogger(__name__)

_T = TypeVar("_T")


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


def _header(err: stripe.StripeError, name: str) -> str | None:
    """A response header of the error, by its name in any case."""
    for key, value in (err.headers or {}).items():
        if key.lower() == name:
            return str(value)
    return None


def _header_true(err: stripe.StripeError, name: str) -> bool:
    return _header(err, name) == "true"


def _retry_after(err: stripe.StripeError) -> float | None:
    value = _header(err, "retry-after")
    try:
        return None if value is None else float(value)
    except ValueError:
        return None


RATE_LIMITED_REASON: Final = "stripe-rate-limited-reason"


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
    if err.http_status == 409 and code == "idempotency_key_in_use":
        # Busy, not unknown: the earlier call with our key decides, and a repeat returns it.
        return KeyInUse(
            "Stripe is still running an earlier call with this key (idempotency_key_in_use)",
            retry_after=_retry_after(err),
        )
    if _header_true(err, "stripe-should-retry"):
        return unknown(f"Stripe asked for a retry ({info.type}/{code})")
    if isinstance(err, stripe.RateLimitError):
        reason = _header(err, RATE_LIMITED_REASON)
        return TransientFailure(
            f"Stripe rate limit ({code}{f', {reason}' if reason else ''})",
            retry_after=_retry_after(err),
        )
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


PAGE_SIZE: Final = 100  # Stripe's largest `limit`
# The Events of a charge's life the reconciliation reads: the ones an API request creating or
# changing a charge raises, carrying that request's idempotency key.
CHARGE_EVENT_TYPES: Final = (
    "charge.succeeded",
    "charge.pending",
    "charge.failed",
    "charge.updated",
)


def is_account_debit(charge: Mapping[str, Any]) -> bool:
    """A charge whose source is a connected account: Stripe renders it as the Account object
    (`object: "account"`), older answers or unexpanded ones as the `acct_…` id."""
    source = charge.get("source")
    if isinstance(source, Mapping) and source.get("object") == "account":
        return True
    return (_id_of(source) or "").startswith("acct_")


def _created(value: object) -> datetime:
    return datetime.fromtimestamp(int(str(value)), UTC)


def charge_seen(charge: Mapping[str, Any]) -> ChargeSeen:
    """A charge as Stripe renders it, in the domain's terms. `account` is the debited
    connected account, None when the charge's source is not an account."""
    metadata = charge.get("metadata") or {}
    return ChargeSeen(
        id=str(charge["id"]),
        status=str(charge.get("status")),
        paid=charge.get("paid") is True,
        amount=int(charge["amount"]),
        currency=str(charge["currency"]).lower(),
        account=_id_of(charge.get("source")) if is_account_debit(charge) else None,
        transfer=_id_of(charge.get("source_transfer")),
        balance_transaction=_id_of(charge.get("balance_transaction")),
        created=_created(charge["created"]),
        request_id=metadata.get("request_id") or None,
    )


def keyed_event(event: Mapping[str, Any]) -> KeyedEvent:
    """An Event with the idempotency key of the request that caused it (None when Stripe
    raised it by itself, or in API versions where `request` is a bare id)."""
    request = event.get("request")
    key = request.get("idempotency_key") if isinstance(request, Mapping) else None
    found = (event.get("data") or {}).get("object") or {}
    charge_id = found.get("id") if found.get("object") == "charge" else None
    return KeyedEvent(
        id=str(event["id"]),
        type=str(event["type"]),
        created=_created(event["created"]),
        idempotency_key=str(key) if key else None,
        charge_id=str(charge_id) if charge_id else None,
    )


def created_filter(created_from: datetime, created_until: datetime) -> dict[str, int]:
    """Stripe's `created` filter (whole epoch seconds) covering [from, until): from floored,
    until ceiled, so nothing in the window is missed; callers filter exactly afterwards."""
    for moment in (created_from, created_until):
        if moment.tzinfo is None:
            raise ValueError(f"{moment!r} has no time zone: Stripe's `created` is UTC")
    return {
        "gte": math.floor(created_from.timestamp()),
        "lt": math.ceil(created_until.timestamp()),
    }


HTTP_TOO_MANY_REQUESTS: Final = 429

# A reconciliation read that Stripe answers with a 429, a 5xx or not at all is simply read
# again (it changes nothing): a round or a day's proof of 10,000 pages must not end on one.
RECORD_READ_TRIES: Final = 8


class StripeGateway:
    def __init__(
        self,
        client: stripe.StripeClient,
        budget: RateBudget,
        *,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self._client = client
        self._budget = budget
        self._sleep = sleep
        self._list_requests = 0
        self._count_lock = threading.Lock()

    def platform(self) -> PlatformFacts:
        try:
            account = self._read(
                "GET /v1/account",
                Priority.UNBLOCKS_DEBIT,
                self._client.v1.accounts.retrieve_current,
            )
        except OperatorActionNeeded:
            metrics.stripe_key_accepted(False)  # readiness says so until a read succeeds
            raise
        metrics.stripe_key_accepted(True)
        return PlatformFacts(account_id=account.id, country=str(account.country).upper())

    def account(self, account_id: str) -> AccountFacts:
        try:
            account = self._read(
                "GET /v1/accounts/{id}",
                Priority.UNBLOCKS_DEBIT,
                self._client.v1.accounts.retrieve,
                account_id,
            )
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
                "GET /v1/refunds/{id}",
                Priority.UNBLOCKS_DEBIT,
                self._client.v1.refunds.retrieve,
                refund_id,
                params={"expand": ["charge"]},
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
            "GET /v1/balance",
            Priority.UNBLOCKS_DEBIT,
            self._client.v1.balance.retrieve,
            options={"stripe_account": account_id},
        )
        return sum(int(item.amount) for item in balance.available if item.currency == currency)

    def create_debit(self, charge: DebitCharge) -> Payment:
        # The SDK's raw request: the same encoding, authentication, retries and error
        # objects as `charges.create`, without building a StripeObject tree of the whole
        # charge (a fifth of the worker's CPU per debit) for the four fields read here.
        response = self._call(
            "POST /v1/charges",
            lambda: self._client.raw_request(
                "post",
                "/v1/charges",
                **charge_params(charge),
                idempotency_key=idempotency_key(charge.request_id),
            ),
            Priority.DEBIT,
            effectful=True,
        )
        return verified_payment(
            charge,
            response.data,
            replayed=(response.headers or {}).get("idempotent-replayed") == "true",
        )

    # --- Stripe's records (StripeRecords) -------------------------------------------------

    @property
    def list_requests(self) -> int:
        with self._count_lock:
            return self._list_requests

    def charge(self, charge_id: str) -> ChargeSeen:
        try:
            found = self._record("GET /v1/charges/{id}", f"/v1/charges/{quote(charge_id, safe='')}")
        except PermanentFailure as failure:
            raise _not_found(
                failure, FailureCode.STRIPE_REJECTED, f"charge {charge_id}"
            ) from failure
        return charge_seen(found)

    def debit_charges(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[ChargeSeen]:
        for charge in self._listed("/v1/charges", created_from, created_until):
            if is_account_debit(charge):
                seen = charge_seen(charge)
                if created_from <= seen.created < created_until:
                    yield seen

    def charge_events(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[KeyedEvent]:
        listed = self._listed(
            "/v1/events", created_from, created_until, types=list(CHARGE_EVENT_TYPES)
        )
        for event in listed:
            keyed = keyed_event(event)
            if created_from <= keyed.created < created_until:
                yield keyed

    def _listed(
        self, path: str, created_from: datetime, created_until: datetime, **filters: Any
    ) -> Iterator[Mapping[str, Any]]:
        """Every object of a list endpoint created in the window, newest first, a page of 100
        at a time following `starting_after` until Stripe says there is no more."""
        params: dict[str, Any] = {
            **filters,
            "created": created_filter(created_from, created_until),
            "limit": PAGE_SIZE,
        }
        while True:
            page = self._record(f"GET {path}", path, **params)
            with self._count_lock:
                self._list_requests += 1
            data: list[Mapping[str, Any]] = page.get("data") or []
            yield from data
            if not page.get("has_more") or not data:
                return
            params["starting_after"] = data[-1]["id"]

    def _record(self, endpoint: str, path: str, **params: Any) -> Mapping[str, Any]:
        """One background GET for reconciliation: a token of the lowest priority first,
        reads' errors."""
        # The SDK's raw request rather than `charges.list(...).auto_paging_iter()`: the same
        # encoding, authentication, retries and errors, without a StripeObject tree per
        # charge. Measured on 20 pages of 100 against the sandbox: 0.12-0.18 s of client CPU
        # to read and map them this way, 1.2-1.9 s merely to build the SDK's objects; for the
        # daily proof's 10,000 pages, about a minute of CPU instead of ten or more.
        for attempt in range(1, RECORD_READ_TRIES + 1):
            try:
                response = self._call(
                    endpoint,
                    lambda: self._client.raw_request("get", path, **params),
                    Priority.BACKGROUND,
                )
            except TransientFailure as passing:
                if attempt == RECORD_READ_TRIES or isinstance(passing, OperatorActionNeeded):
                    raise
                delay = retry_delay(attempt, base=0.5, cap=30.0, at_least=passing.retry_after)
                log.info("%s: %s; reading again in %.1f s", endpoint, passing, delay)
                self._sleep(delay)
                continue
            answer: Mapping[str, Any] = response.data
            return answer
        raise AssertionError("unreachable: the last try returns or raises")

    def _read(self, endpoint: str, priority: Priority, call: Any, *args: Any, **kwargs: Any) -> Any:
        return self._call(endpoint, lambda: call(*args, **kwargs), priority)

    def _call(
        self,
        endpoint: str,
        send: Callable[[], _T],
        priority: Priority,
        *,
        effectful: bool = False,
    ) -> _T:
        """One Stripe call: a token of the rate budget (the endpoint's class, `priority`
        unless the caller runs `in_background()`), then the call; both timed for the
        metrics, a 429 reported to the budget, Stripe's errors sorted (`classify`)."""
        priority = effective_priority(priority)
        limited_by = endpoint_class(endpoint)
        asked = time.perf_counter()
        self._budget.acquire(limited_by, priority)
        started = time.perf_counter()
        metrics.rate_budget_waited(started - asked, spare=priority >= Priority.BACKGROUND)
        try:
            answer = send()
        except stripe.StripeError as err:
            reason = None
            if err.http_status == HTTP_TOO_MANY_REQUESTS:
                reason = self._rate_limited(limited_by, err)
            metrics.stripe_answered(
                endpoint, err.http_status, time.perf_counter() - started, rate_limited_by=reason
            )
            raise classify(err, effectful=effectful) from err
        metrics.stripe_answered(endpoint, _status(answer), time.perf_counter() - started)
        return answer

    def _rate_limited(self, limited_by: str, err: stripe.StripeError) -> str | None:
        """Tell the budget which limit Stripe enforced; returns the reason Stripe gave. A 429
        `lock_timeout` is contention on one object, not a rate: nothing to back off."""
        reason = _header(err, RATE_LIMITED_REASON)
        code = err.error.code if err.error is not None else None
        if code != "lock_timeout":
            self._budget.rate_limited(limited_by, reason, _retry_after(err))
        return reason


def _status(answer: object) -> int:
    """The HTTP status of an SDK answer: a raw response's, or a resource's last response's."""
    response = getattr(answer, "last_response", answer)
    return int(getattr(response, "code", 200))
