"""Any valid message survives model -> JSON -> model unchanged, and its JSON matches the
committed JSON Schema: what the worker writes, a consumer in any language can read back."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from schemas.codes import FailureCode
from schemas.commands import (
    MAX_AMOUNT,
    MAX_METADATA_KEY_LENGTH,
    MAX_METADATA_KEYS,
    MAX_METADATA_VALUE_LENGTH,
    WORKER_METADATA_KEYS,
    DebitReason,
    DebitRequested,
)
from schemas.events import (
    DebitFailed,
    DebitFailedEvent,
    DebitSucceeded,
    DebitSucceededEvent,
    FieldError,
    StripeErrorInfo,
    failed_event,
    succeeded_event,
)

JSON_DIR = Path(__file__).resolve().parents[2] / "schemas" / "json"

ALNUM = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"


def stripe_id(prefix: str, max_size: int = 64) -> st.SearchStrategy[str]:
    return st.text(ALNUM, min_size=1, max_size=max_size).map(lambda tail: f"{prefix}_{tail}")


request_ids = st.builds(
    lambda first, rest: first + rest,
    st.sampled_from(ALNUM),
    st.text(ALNUM + "._:-", max_size=127),
)
accounts = stripe_id("acct")
refunds = st.one_of(stripe_id("re"), stripe_id("pyr"))
currencies = st.text("abcdefghijklmnopqrstuvwxyz", min_size=3, max_size=3)
amounts = st.integers(min_value=1, max_value=MAX_AMOUNT)
# Fixed offsets in whole minutes: what RFC 3339 can carry.
offsets = st.integers(min_value=-14 * 60, max_value=14 * 60).map(
    lambda minutes: timezone(timedelta(minutes=minutes))
)
instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=offsets
)
metadata_keys = st.text(
    st.characters(codec="utf-8", exclude_characters="[]"),
    min_size=1,
    max_size=MAX_METADATA_KEY_LENGTH,
).filter(lambda key: key not in WORKER_METADATA_KEYS)
metadata = st.dictionaries(
    metadata_keys,
    st.text(max_size=MAX_METADATA_VALUE_LENGTH),
    max_size=MAX_METADATA_KEYS,
)


@st.composite
def debit_requests(draw: st.DrawFn) -> DebitRequested:
    reason = draw(st.sampled_from(DebitReason))
    refund = draw(refunds) if reason is DebitReason.REFUND_RECOVERY else None
    return DebitRequested(
        request_id=draw(request_ids),
        account=draw(accounts),
        amount=draw(amounts),
        currency=draw(currencies),
        reason=reason,
        refund=refund,
        description=draw(st.none() | st.text(min_size=1, max_size=1000)),
        metadata=draw(metadata),
        requested_at=draw(st.none() | instants),
    )


@st.composite
def debit_successes(draw: st.DrawFn) -> DebitSucceeded:
    command = draw(debit_requests())
    return DebitSucceeded(
        request_id=command.request_id,
        account=command.account,
        amount=command.amount,
        currency=command.currency,
        reason=command.reason,
        refund=command.refund,
        description=command.description,
        metadata=command.metadata,
        payment=draw(stripe_id("py")),
        transfer=draw(st.none() | stripe_id("tr")),
        balance_transaction=draw(st.none() | stripe_id("txn")),
        succeeded_at=draw(instants),
    )


stripe_errors = st.builds(
    StripeErrorInfo,
    type=st.sampled_from(["invalid_request_error", "card_error", "api_error"]),
    code=st.none() | st.sampled_from(["balance_insufficient", "account_invalid"]),
    decline_code=st.none() | st.text(max_size=30),
    message=st.none() | st.text(max_size=200),
    request_id=st.none() | stripe_id("req", 14),
)
field_errors = st.builds(FieldError, field=st.text(max_size=60), message=st.text(max_size=200))


@st.composite
def debit_failures(draw: st.DrawFn) -> DebitFailed:
    code = draw(st.sampled_from(FailureCode))
    return DebitFailed(
        request_id=draw(request_ids),
        account=draw(st.none() | st.text(max_size=80)),
        amount=draw(st.none() | st.integers()),
        currency=draw(st.none() | st.text(max_size=5)),
        reason=draw(st.none() | st.text(max_size=20)),
        refund=draw(st.none() | st.text(max_size=80)),
        code=code,
        message=draw(st.text(max_size=300)),
        retry_may_succeed=code.retry_may_succeed,
        field_errors=draw(st.lists(field_errors, max_size=5)),
        stripe_error=draw(st.none() | stripe_errors),
        failed_at=draw(instants),
    )


sources = st.sampled_from(["urn:debit-worker", "urn:debit-worker:eu-1", "https://debits.example"])


@cache
def validator(filename: str) -> Draft202012Validator:
    return Draft202012Validator(json.loads((JSON_DIR / filename).read_text(encoding="utf-8")))


def assert_round_trips(message: BaseModel, schema_file: str) -> None:
    wire = message.model_dump_json()
    assert type(message).model_validate_json(wire) == message
    document: Any = json.loads(wire)
    assert type(message).model_validate(document) == message
    errors = [error.message for error in validator(schema_file).iter_errors(document)]
    assert errors == []


@given(debit_requests())
def test_any_valid_command_round_trips_and_matches_its_schema(command: DebitRequested) -> None:
    # Given a valid command / When it goes to JSON and back / Then it is unchanged
    assert_round_trips(command, "debit-requested.v1.json")


@given(debit_requests())
def test_a_command_round_trip_keeps_its_fingerprint(command: DebitRequested) -> None:
    # Given a valid command / When it is re-read from its JSON / Then it fingerprints the same
    again = DebitRequested.model_validate_json(command.model_dump_json())
    assert again.fingerprint() == command.fingerprint()


@given(debit_successes())
def test_any_success_round_trips_and_matches_its_schema(data: DebitSucceeded) -> None:
    assert_round_trips(data, "debit-succeeded.v1.json")


@given(debit_failures())
def test_any_failure_round_trips_and_matches_its_schema(data: DebitFailed) -> None:
    assert_round_trips(data, "debit-failed.v1.json")


@given(debit_successes(), sources)
def test_any_succeeded_envelope_round_trips_and_matches_its_schema(
    data: DebitSucceeded, source: str
) -> None:
    # Given a success wrapped in its CloudEvent / When it travels as JSON / Then nothing changes
    event = succeeded_event(data, source=source)
    assert_round_trips(event, "debit-succeeded-event.v1.json")
    assert DebitSucceededEvent.model_validate_json(event.model_dump_json()).data == data


@given(debit_failures(), sources)
def test_any_failed_envelope_round_trips_and_matches_its_schema(
    data: DebitFailed, source: str
) -> None:
    event = failed_event(data, source=source)
    assert_round_trips(event, "debit-failed-event.v1.json")
    assert DebitFailedEvent.model_validate_json(event.model_dump_json()).data == data


@given(debit_successes())
def test_a_consumer_on_v1_ignores_fields_added_later_within_v1(data: DebitSucceeded) -> None:
    # Given an event from a newer v1 worker that carries an extra (additive) field
    document = json.loads(succeeded_event(data).model_dump_json())
    document["data"]["added_in_v1_1"] = "something new"
    document["extension"] = "value"
    # When a consumer built against this v1 reads it
    event = DebitSucceededEvent.model_validate(document)
    # Then it reads what it knows and the schema accepts it too
    assert event.data == data
    assert list(validator("debit-succeeded-event.v1.json").iter_errors(document)) == []
