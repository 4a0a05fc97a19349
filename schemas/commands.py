"""DebitRequested: the command a producer publishes to ask for one account debit."""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Annotated, Any, Final

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    Strict,
    StringConstraints,
    ValidationInfo,
    field_validator,
)

# Stripe allows 50 metadata keys; the worker writes these itself, so producers get the rest.
WORKER_METADATA_KEYS: Final = frozenset({"request_id", "reason", "refund"})
MAX_METADATA_KEYS: Final = 50 - len(WORKER_METADATA_KEYS)
MAX_METADATA_KEY_LENGTH: Final = 40
MAX_METADATA_VALUE_LENGTH: Final = 500
# A schema-level sanity bound that stays exact in every JSON parser (JavaScript included);
# the real per-currency cap is a policy rule.
MAX_AMOUNT: Final = 999_999_999_999

RequestId = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$"),
    Field(
        description="Chosen by the producer, unique per intended debit; the idempotency "
        "anchor. 1-128 characters: letters, digits, '.', '_', ':', '-'; starts with a letter "
        "or digit.",
        examples=["fee-2026-11-acct_1PZk3f2eZvKYlo2C"],
    ),
]
AccountId = Annotated[
    str,
    StringConstraints(pattern=r"^acct_[A-Za-z0-9]{1,64}$"),
    Field(description="The connected account to debit.", examples=["acct_1PZk3f2eZvKYlo2C"]),
]
RefundId = Annotated[
    str,
    StringConstraints(pattern=r"^(re|pyr)_[A-Za-z0-9]{1,64}$"),
    Field(description="The Stripe refund this debit recovers.", examples=["re_3PZk9a2eZvKYlo2C"]),
]
Currency = Annotated[
    str,
    StringConstraints(pattern=r"^[a-z]{3}$"),
    Field(description="ISO 4217 code, lower-case.", examples=["usd"]),
]
Amount = Annotated[
    int,
    Strict(),
    Field(
        gt=0,
        le=MAX_AMOUNT,
        description="Positive integer in the currency's minor unit (cents for usd; yen for "
        "the zero-decimal jpy).",
        examples=[2500],
    ),
]


_METADATA_KEY_PATTERN: Final = r"^[^\[\]]+$"

# Lengths are checked by the types (so the error names the key); the pattern and the reserved
# keys by `_check_metadata`, because pydantic would render a key pattern as patternProperties,
# which lets non-matching keys through in JSON Schema. `_metadata_json_schema` states both.
MetadataKey = Annotated[str, StringConstraints(min_length=1, max_length=MAX_METADATA_KEY_LENGTH)]
MetadataValue = Annotated[str, StringConstraints(max_length=MAX_METADATA_VALUE_LENGTH)]


def _check_metadata(value: dict[str, str]) -> dict[str, str]:
    reserved = WORKER_METADATA_KEYS.intersection(value)
    if reserved:
        raise ValueError(f"keys reserved for the worker: {', '.join(sorted(reserved))}")
    for key in value:
        if "[" in key or "]" in key:
            raise ValueError(f"key {key!r} must not contain '[' or ']'")
    return value


def _metadata_json_schema(schema: dict[str, Any]) -> None:
    names = schema.setdefault("propertyNames", {})
    names["pattern"] = _METADATA_KEY_PATTERN
    names["not"] = {"enum": sorted(WORKER_METADATA_KEYS)}


Metadata = Annotated[
    dict[MetadataKey, MetadataValue],
    Field(
        max_length=MAX_METADATA_KEYS,
        description=f"Copied to the Stripe payment. At most {MAX_METADATA_KEYS} keys of "
        f"1-{MAX_METADATA_KEY_LENGTH} characters without '[' or ']', values of at most "
        f"{MAX_METADATA_VALUE_LENGTH}; the keys request_id, reason and refund are written by "
        "the worker.",
        json_schema_extra=_metadata_json_schema,
    ),
    AfterValidator(_check_metadata),
]


class DebitReason(StrEnum):
    PLATFORM_CHARGE = "platform_charge"
    REFUND_RECOVERY = "refund_recovery"
    ADJUSTMENT = "adjustment"


class DebitRequested(BaseModel):
    """Pull `amount` of `currency` out of connected account `account` into the platform."""

    model_config = ConfigDict(
        frozen=True,
        extra="forbid",
        title="DebitRequested",
        json_schema_extra={
            "$comment": "Command, version 1. Additive changes only within v1.",
            # The refund/reason rule of `_refund_matches_reason`, for non-Python producers.
            "if": {
                "properties": {"reason": {"const": DebitReason.REFUND_RECOVERY.value}},
                "required": ["reason"],
            },
            "then": {"properties": {"refund": {"type": "string"}}, "required": ["refund"]},
            "else": {"properties": {"refund": {"type": "null"}}},
        },
    )

    request_id: RequestId
    account: AccountId
    amount: Amount
    currency: Currency
    reason: DebitReason = Field(
        description="platform_charge: fees for the platform's goods or services; "
        "refund_recovery: pull back a refund the platform paid (names `refund`); "
        "adjustment: corrections and other adjustments."
    )
    # validate_default: the reason/refund rule must also run when refund is left out.
    refund: RefundId | None = Field(
        default=None,
        validate_default=True,
        description="Required when reason is refund_recovery, forbidden otherwise.",
    )
    description: Annotated[str, StringConstraints(min_length=1, max_length=1000)] | None = Field(
        default=None, description="Shown on the payment in the Stripe dashboard."
    )
    metadata: Metadata = Field(default_factory=dict)
    requested_at: AwareDatetime | None = Field(
        default=None, description="When the producer decided on the debit (RFC 3339)."
    )

    # A field validator (not a model validator) so the error's loc names `refund`.
    @field_validator("refund")
    @classmethod
    def _refund_matches_reason(cls, refund: str | None, info: ValidationInfo) -> str | None:
        reason = info.data.get("reason")
        if reason is None:  # reason itself is invalid, and reported as such
            return refund
        if reason is DebitReason.REFUND_RECOVERY and refund is None:
            raise ValueError("refund is required when reason is refund_recovery")
        if reason is not DebitReason.REFUND_RECOVERY and refund is not None:
            raise ValueError(f"refund is only allowed with reason refund_recovery, not {reason}")
        return refund

    def fingerprint(self) -> str:
        """Hash of what the debit *does*; `requested_at` is left out so a producer's resend of
        the same intent is not a conflict."""
        content = self.model_dump(mode="json", exclude={"requested_at"})
        canonical = json.dumps(content, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
        return hashlib.sha256(canonical.encode()).hexdigest()
