"""Stripe-shaped refusals: one exception type, one builder per refusal the sandbox makes.

Every refusal carries what Stripe's error body carries (type, code, message, param) plus the
HTTP status; `app.py` turns it into `{"error": {...}}` with a `doc_url`.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class StripeError(Exception):
    status: int
    type: str
    message: str
    code: str | None = None
    param: str | None = None
    headers: dict[str, str] = field(default_factory=dict)

    def body(self, request_id: str) -> dict[str, object]:
        error: dict[str, object] = {"type": self.type, "message": self.message}
        if self.code is not None:
            error["code"] = self.code
            error["doc_url"] = "https://stripe.com/docs/error-codes/" + self.code.replace("_", "-")
        if self.param is not None:
            error["param"] = self.param
        error["request_log_url"] = f"https://dashboard.stripe.com/test/logs/{request_id}"
        return {"error": error}


INVALID = "invalid_request_error"


def parameter_missing(param: str) -> StripeError:
    return StripeError(
        400, INVALID, f"Missing required param: {param}.", "parameter_missing", param
    )


def parameter_unknown(param: str) -> StripeError:
    return StripeError(
        400, INVALID, f"Received unknown parameter: {param}", "parameter_unknown", param
    )


def parameter_invalid_integer(param: str, raw: str) -> StripeError:
    return StripeError(400, INVALID, f"Invalid integer: {raw}", "parameter_invalid_integer", param)


def parameter_invalid_empty(param: str) -> StripeError:
    return StripeError(
        400,
        INVALID,
        f"You passed an empty string for '{param}'. We assume empty values are an attempt to "
        f"unset a parameter; however '{param}' cannot be unset.",
        "parameter_invalid_empty",
        param,
    )


def invalid(message: str, *, param: str | None = None, code: str | None = None) -> StripeError:
    return StripeError(400, INVALID, message, code, param)


def resource_missing(kind: str, ident: str, *, param: str | None, status: int) -> StripeError:
    return StripeError(status, INVALID, f"No such {kind}: '{ident}'", "resource_missing", param)


def account_invalid(api_key: str, account: str) -> StripeError:
    return StripeError(
        400,
        INVALID,
        f"The provided key '{redact(api_key)}' does not have access to account '{account}' "
        "(or that account does not exist). Application access may have been revoked.",
        "account_invalid",
    )


def balance_insufficient(currency: str) -> StripeError:
    return StripeError(
        400,
        INVALID,
        "You have insufficient funds in your Stripe account for this transfer. Your "
        f"available {currency.upper()} balance is too low to cover it.",
        "balance_insufficient",
    )


def invalid_api_key(presented: str) -> StripeError:
    return StripeError(
        401,
        INVALID,
        f"Invalid API Key provided: {redact(presented)}",
        headers={"WWW-Authenticate": 'Basic realm="Stripe"'},
    )


def no_api_key() -> StripeError:
    return StripeError(
        401,
        INVALID,
        "You did not provide an API key. You need to provide your API key in the "
        "Authorization header, using Bearer auth (e.g. 'Authorization: Bearer "
        "YOUR_SECRET_KEY').",
        headers={"WWW-Authenticate": 'Basic realm="Stripe"'},
    )


def idempotency_mismatch(key: str) -> StripeError:
    return StripeError(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were "
        f"first used with. Try using a key other than '{key}' if you meant to execute a "
        "different request.",
    )


def idempotency_key_in_use(key: str) -> StripeError:
    return StripeError(
        409,
        INVALID,
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through): "
        f"{key}. Please try again later.",
        "idempotency_key_in_use",
    )


def rate_limited(reason: str | None) -> StripeError:
    """`reason`: the limiter that refused (`Stripe-Rate-Limited-Reason`); None: no header."""
    return StripeError(
        429,
        INVALID,
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        "rate_limit",
        headers={"Stripe-Rate-Limited-Reason": reason} if reason else {},
    )


def api_error() -> StripeError:
    return StripeError(
        500,
        "api_error",
        "An unknown error occurred (sandbox fault injection). Retry with the same "
        "idempotency key to see the stored result.",
    )


def redact(key: str) -> str:
    """Show a key the way Stripe's 401 does: its prefix and last four characters."""
    parts = key.split("_")
    prefix = "_".join(parts[:2]) + "_" if len(parts) > 2 else ""
    tail = key[-4:] if len(key) > 8 else ""
    return prefix + "*" * max(len(key) - len(prefix) - len(tail), 4) + tail
