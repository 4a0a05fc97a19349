"""Every way a DebitRequested can be wrong is refused, naming the offending field; and what a
command fingerprints to."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from schemas.commands import (
    MAX_AMOUNT,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    DebitRequested,
)

VALID: dict[str, Any] = {
    "request_id": "fee-2026-11-acct_1PZk3f2eZvKYlo2C",
    "account": "acct_1PZk3f2eZvKYlo2C",
    "amount": 2500,
    "currency": "usd",
    "reason": "platform_charge",
    "description": "Marketplace subscription, November 2026",
    "metadata": {"invoice": "inv_2026_11_0042"},
    "requested_at": "2026-11-01T09:00:00Z",
}
REFUND_RECOVERY: dict[str, Any] = {
    **VALID,
    "request_id": "recovery-re_3PZk9a2eZvKYlo2C-1",
    "reason": "refund_recovery",
    "refund": "re_3PZk9a2eZvKYlo2C",
}
REQUIRED = ("request_id", "account", "amount", "currency", "reason")


def without(document: dict[str, Any], field: str) -> dict[str, Any]:
    return {key: value for key, value in document.items() if key != field}


def many_keys(count: int) -> dict[str, str]:
    return {f"k{index}": "v" for index in range(count)}


# (id, changes to VALID, the field the error must name)
INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("amount-as-string", {"amount": "100"}, "amount"),
    ("amount-as-float", {"amount": 1.5}, "amount"),
    ("amount-as-integral-float", {"amount": 100.0}, "amount"),
    ("amount-as-bool", {"amount": True}, "amount"),
    ("amount-null", {"amount": None}, "amount"),
    ("amount-zero", {"amount": 0}, "amount"),
    ("amount-negative", {"amount": -1}, "amount"),
    ("amount-above-max", {"amount": MAX_AMOUNT + 1}, "amount"),
    ("currency-as-number", {"currency": 840}, "currency"),
    ("currency-upper-case", {"currency": "USD"}, "currency"),
    ("currency-two-letters", {"currency": "us"}, "currency"),
    ("currency-four-letters", {"currency": "usdx"}, "currency"),
    ("request-id-empty", {"request_id": ""}, "request_id"),
    ("request-id-too-long", {"request_id": "r" * 129}, "request_id"),
    ("request-id-space", {"request_id": "fee 2026"}, "request_id"),
    ("request-id-slash", {"request_id": "fee/2026"}, "request_id"),
    ("request-id-leading-dash", {"request_id": "-fee"}, "request_id"),
    ("request-id-trailing-newline", {"request_id": "fee\n"}, "request_id"),
    ("request-id-as-number", {"request_id": 42}, "request_id"),
    ("account-customer-id", {"account": "cus_NffrFeUfNV2Hib"}, "account"),
    ("account-no-tail", {"account": "acct_"}, "account"),
    ("account-bad-chars", {"account": "acct_1PZk-3f2"}, "account"),
    ("reason-unknown", {"reason": "tip"}, "reason"),
    ("description-empty", {"description": ""}, "description"),
    ("description-too-long", {"description": "d" * 1001}, "description"),
    ("metadata-not-object", {"metadata": ["a"]}, "metadata"),
    ("metadata-too-many-keys", {"metadata": many_keys(MAX_METADATA_KEYS + 1)}, "metadata"),
    ("metadata-key-too-long", {"metadata": {"k" * (MAX_METADATA_KEY_LENGTH + 1): "v"}}, "metadata"),
    ("metadata-key-empty", {"metadata": {"": "v"}}, "metadata"),
    ("metadata-key-bracket", {"metadata": {"items[0]": "v"}}, "metadata"),
    (
        "metadata-value-too-long",
        {"metadata": {"k": "v" * (MAX_METADATA_VALUE_LENGTH + 1)}},
        "metadata",
    ),
    ("metadata-value-number", {"metadata": {"k": 1}}, "metadata"),
    ("metadata-reserved-request-id", {"metadata": {"request_id": "x"}}, "metadata"),
    ("metadata-reserved-reason", {"metadata": {"reason": "x"}}, "metadata"),
    ("metadata-reserved-refund", {"metadata": {"refund": "re_1"}}, "metadata"),
    ("requested-at-naive", {"requested_at": "2026-11-01T09:00:00"}, "requested_at"),
    ("requested-at-not-a-date", {"requested_at": "yesterday"}, "requested_at"),
    ("unknown-field", {"amount_usd": 25}, "amount_usd"),
]
# (id, the whole document, the field the error must name); the refund/reason rule.
INVALID_REFUNDS: list[tuple[str, dict[str, Any], str]] = [
    ("refund-recovery-without-refund", without(REFUND_RECOVERY, "refund"), "refund"),
    ("refund-recovery-with-null-refund", {**REFUND_RECOVERY, "refund": None}, "refund"),
    ("platform-charge-with-refund", {**VALID, "refund": "re_3PZk9a2eZvKYlo2C"}, "refund"),
    ("adjustment-with-refund", {**VALID, "reason": "adjustment", "refund": "re_1"}, "refund"),
    ("refund-charge-id", {**REFUND_RECOVERY, "refund": "ch_3PZk9a2eZvKYlo2C"}, "refund"),
    ("refund-payment-id", {**REFUND_RECOVERY, "refund": "py_3PZk9a2eZvKYlo2C"}, "refund"),
]


def error_fields(error: ValidationError) -> set[str]:
    """The top-level fields the errors' `loc` name (what DebitFailed.field_errors reports)."""
    return {str(item["loc"][0]) if item["loc"] else "" for item in error.errors()}


def refuse(document: dict[str, Any]) -> ValidationError:
    with pytest.raises(ValidationError) as refused:
        DebitRequested.model_validate_json(json.dumps(document))
    return refused.value


@pytest.mark.parametrize("document", [VALID, REFUND_RECOVERY], ids=["charge", "recovery"])
def test_the_baseline_commands_are_accepted(document: dict[str, Any]) -> None:
    # Given a well-formed command / When the worker parses it / Then it is accepted as sent
    command = DebitRequested.model_validate_json(json.dumps(document))
    assert command.model_dump(mode="json", exclude_none=True) == {**document}


@pytest.mark.parametrize("field", REQUIRED)
def test_a_command_missing_a_required_field_is_refused_naming_it(field: str) -> None:
    # Given a command without one required field / When parsed / Then the error names it
    error = refuse(without(VALID, field))
    assert [(item["type"], item["loc"]) for item in error.errors()] == [("missing", (field,))]


@pytest.mark.parametrize(
    ("changes", "field"),
    [pytest.param(changes, field, id=case) for case, changes, field in INVALID],
)
def test_a_wrong_field_is_refused_naming_it(changes: dict[str, Any], field: str) -> None:
    # Given a valid command with one field made wrong / When parsed
    error = refuse({**VALID, **changes})
    # Then the error is about that field, and only that one
    assert error_fields(error) == {field}


@pytest.mark.parametrize(
    ("document", "field"),
    [pytest.param(document, field, id=case) for case, document, field in INVALID_REFUNDS],
)
def test_refund_and_reason_must_agree(document: dict[str, Any], field: str) -> None:
    # Given a refund that does not fit the reason / When parsed / Then the error names refund
    assert error_fields(refuse(document)) == {field}


def test_the_metadata_limits_themselves_are_allowed() -> None:
    # Given metadata exactly at every limit / When parsed / Then it is accepted
    metadata = many_keys(MAX_METADATA_KEYS - 1)
    metadata["k" * MAX_METADATA_KEY_LENGTH] = "v" * MAX_METADATA_VALUE_LENGTH
    command = DebitRequested.model_validate({**VALID, "metadata": metadata, "amount": MAX_AMOUNT})
    assert len(command.metadata) == MAX_METADATA_KEYS


def test_a_refund_recovery_may_name_a_pyr_refund() -> None:
    # Given a recovery of a refund of a Payment (pyr_...) / When parsed / Then it is accepted
    command = DebitRequested.model_validate({**REFUND_RECOVERY, "refund": "pyr_1PZk9a2eZvKYlo"})
    assert command.refund == "pyr_1PZk9a2eZvKYlo"


# --- fingerprint -------------------------------------------------------------------------


def fingerprint(document: dict[str, Any]) -> str:
    return DebitRequested.model_validate(document).fingerprint()


def test_the_same_content_has_the_same_fingerprint() -> None:
    # Given the same command parsed twice, with keys in another order
    reordered = dict(reversed(list(VALID.items())))
    # Then both fingerprint the same, and the fingerprint is a sha256 hex digest
    assert fingerprint(VALID) == fingerprint(reordered)
    assert len(fingerprint(VALID)) == 64


@pytest.mark.parametrize(
    "requested_at",
    [None, "2026-11-02T00:00:00Z", datetime(2030, 1, 1, tzinfo=UTC)],
    ids=["absent", "a-day-later", "years-later"],
)
def test_requested_at_does_not_change_the_fingerprint(requested_at: object) -> None:
    # Given a resend of the same intent at another time / Then it is not a different debit
    assert fingerprint({**VALID, "requested_at": requested_at}) == fingerprint(VALID)


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"request_id": "fee-2026-12-acct_1PZk3f2eZvKYlo2C"}, id="request_id"),
        pytest.param({"account": "acct_1Other"}, id="account"),
        pytest.param({"amount": 2501}, id="amount"),
        pytest.param({"currency": "eur"}, id="currency"),
        pytest.param({"reason": "adjustment"}, id="reason"),
        pytest.param({"description": "Another fee"}, id="description"),
        pytest.param({"description": None}, id="description-removed"),
        pytest.param({"metadata": {}}, id="metadata-removed"),
        pytest.param({"metadata": {"invoice": "inv_2026_11_0043"}}, id="metadata-value"),
    ],
)
def test_any_change_to_what_the_debit_does_changes_the_fingerprint(
    changes: dict[str, Any],
) -> None:
    # Given the same request with one field changed / Then the fingerprints differ
    assert fingerprint({**VALID, **changes}) != fingerprint(VALID)


def test_a_different_refund_changes_the_fingerprint() -> None:
    other = {**REFUND_RECOVERY, "refund": "re_3PZk9a2eZvKYlo2D"}
    assert fingerprint(other) != fingerprint(REFUND_RECOVERY)
