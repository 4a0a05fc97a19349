"""Read and check the parameters of the requests the sandbox serves, like Stripe does."""

from __future__ import annotations

import re
from dataclasses import dataclass

from worker.sandbox import errors
from worker.sandbox.forms import FormValue

# Every parameter POST /v1/charges knows (API 2023-08-16); the fidelity tests compare this
# list with the OpenAPI excerpt.
CHARGE_PARAMS = frozenset((
    "amount", "application_fee", "application_fee_amount", "capture", "card", "currency",
    "customer", "description", "destination", "expand", "metadata", "on_behalf_of",
    "radar_options", "receipt_email", "shipping", "source", "statement_descriptor",
    "statement_descriptor_suffix", "transfer_data", "transfer_group",
))  # fmt: skip
# Known to Stripe, harmless for an account debit: accepted and ignored.
IGNORED_CHARGE_PARAMS = frozenset(
    {"expand", "statement_descriptor", "statement_descriptor_suffix", "transfer_group"}
)
READ_PARAMS = frozenset({"expand"})
_CURRENCY = re.compile(r"^[a-z]{3}$")
MAX_METADATA_KEYS, MAX_METADATA_KEY, MAX_METADATA_VALUE = 50, 40, 500


@dataclass(frozen=True)
class DebitParams:
    source: str
    amount: int
    currency: str
    description: str | None
    metadata: dict[str, str]


def reject_unknown(params: dict[str, FormValue], known: frozenset[str]) -> None:
    for name in params:
        if name not in known:
            raise errors.parameter_unknown(name)


def parse_debit(params: dict[str, FormValue]) -> DebitParams:
    reject_unknown(params, CHARGE_PARAMS)
    for name in sorted(set(params) - {"amount", "currency", "source", "description", "metadata"}):
        if name not in IGNORED_CHARGE_PARAMS:
            raise errors.invalid(
                f"The sandbox serves account debits only (source=acct_...); parameter "
                f"'{name}' is not supported here.",
                param=name,
            )
    return DebitParams(
        source=_source(params),
        amount=_amount(params),
        currency=_currency(params),
        description=_optional_string(params, "description"),
        metadata=_metadata(params),
    )


def _required_string(params: dict[str, FormValue], name: str) -> str:
    value = params.get(name)
    if value is None:
        raise errors.parameter_missing(name)
    if not isinstance(value, str):
        raise errors.invalid(f"Invalid {name}: must be a string", param=name)
    if value == "":
        raise errors.parameter_invalid_empty(name)
    return value


def _optional_string(params: dict[str, FormValue], name: str) -> str | None:
    value = params.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.invalid(f"Invalid {name}: must be a string", param=name)
    return value


def _source(params: dict[str, FormValue]) -> str:
    if "source" not in params and "customer" not in params:
        raise errors.StripeError(
            400, errors.INVALID, "Must provide source or customer.", "parameter_missing", "source"
        )
    return _required_string(params, "source")


def _amount(params: dict[str, FormValue]) -> int:
    raw = _required_string(params, "amount")
    try:
        amount = int(raw, 10)
    except ValueError:
        raise errors.parameter_invalid_integer("amount", raw) from None
    if amount <= 0:
        raise errors.StripeError(
            400, errors.INVALID, "Invalid positive integer", "parameter_invalid_integer", "amount"
        )
    return amount


def _currency(params: dict[str, FormValue]) -> str:
    currency = _required_string(params, "currency").lower()
    if not _CURRENCY.match(currency):
        raise errors.invalid(
            f"Invalid currency: {currency}. Stripe currently supports three-letter ISO "
            "currency codes in lower case.",
            param="currency",
        )
    return currency


def _metadata(params: dict[str, FormValue]) -> dict[str, str]:
    value = params.get("metadata")
    if value is None or value == "":
        return {}
    if not isinstance(value, dict):
        raise errors.invalid("Invalid object", param="metadata")
    if len(value) > MAX_METADATA_KEYS:
        raise errors.invalid(
            f"Metadata can have at most {MAX_METADATA_KEYS} keys.", param="metadata"
        )
    metadata: dict[str, str] = {}
    for key, item in value.items():
        if not isinstance(item, str):
            raise errors.invalid("Metadata values must be strings.", param=f"metadata[{key}]")
        if len(key) > MAX_METADATA_KEY:
            raise errors.invalid(
                f"Metadata keys can have at most {MAX_METADATA_KEY} characters.",
                param=f"metadata[{key}]",
            )
        if len(item) > MAX_METADATA_VALUE:
            raise errors.invalid(
                f"Metadata values can have at most {MAX_METADATA_VALUE} characters.",
                param=f"metadata[{key}]",
            )
        if item != "":  # an empty value unsets the key
            metadata[key] = item
    return metadata
