"""The default seed's ids and a worker-style account debit call, shared by the tests."""

from __future__ import annotations

from typing import Any

import stripe

PLATFORM = "acct_1PlatformUS000000001"
EXPRESS_US = "acct_1ExpressUS00000001"
LEGACY_CUSTOM = "acct_1CustomLegacy000001"
STANDARD_US = "acct_1StandardUS0000001"
EXPRESS_JP = "acct_1ExpressJP00000001"
EXPRESS_HK = "acct_1ExpressHK00000001"
EXPRESS_CA = "acct_1ExpressCA00000001"
LOW_BALANCE_US = "acct_1LowBalanceUS00001"
REFUND_USD = "re_1RefundUSD0000000001"
REFUND_EUR = "re_1RefundEUR0000000001"
SEEDED_USD = 1_000_000


def debit_params(
    source: str = EXPRESS_US, amount: int = 1_500, currency: str = "usd", **extra: Any
) -> dict[str, Any]:
    """The parameters the worker sends for one account debit."""
    return {
        "source": source,
        "amount": amount,
        "currency": currency,
        "description": "Platform fee for October",
        "metadata": {"debit_id": "dbt_test_1", "reason": "fee"},
        **extra,
    }


def debit(
    client: stripe.StripeClient,
    key: str | None = None,
    *,
    stripe_account: str | None = None,
    **params: Any,
) -> stripe.Charge:
    options: dict[str, Any] = {}
    if key is not None:
        options["idempotency_key"] = key
    if stripe_account is not None:
        options["stripe_account"] = stripe_account
    return client.v1.charges.create(params=debit_params(**params), options=options)  # type: ignore[arg-type]


def replayed(obj: stripe.StripeObject) -> bool:
    response = obj.last_response
    assert response is not None
    return response.headers.get("Idempotent-Replayed") == "true"
