"""Event ids are reproducible per (source, request_id, outcome); every failure code is
explained in the catalogue."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest

from schemas.codes import CATALOGUE, FailureCode
from schemas.commands import DebitReason
from schemas.events import (
    DEFAULT_SOURCE,
    FAILED_DATASCHEMA,
    FAILED_TYPE,
    SUCCEEDED_DATASCHEMA,
    SUCCEEDED_TYPE,
    DebitFailed,
    DebitSucceeded,
    event_id,
    failed_event,
    succeeded_event,
)
from schemas.generate import SCHEMA_FILES

REQUEST_ID = "fee-2026-11-acct_1PZk3f2eZvKYlo2C"
AT = datetime(2026, 11, 1, 9, 0, 3, tzinfo=UTC)


def success(request_id: str = REQUEST_ID) -> DebitSucceeded:
    return DebitSucceeded(
        request_id=request_id,
        account="acct_1PZk3f2eZvKYlo2C",
        amount=2500,
        currency="usd",
        reason=DebitReason.PLATFORM_CHARGE,
        payment="py_1PZkB42eZvKYlo2CqXh3TmQa",
        succeeded_at=AT,
    )


def failure(request_id: str = REQUEST_ID) -> DebitFailed:
    return DebitFailed(
        request_id=request_id,
        code=FailureCode.INSUFFICIENT_BALANCE,
        message="balance too low",
        retry_may_succeed=True,
        failed_at=AT,
    )


def test_the_same_source_request_and_type_give_the_same_event_id() -> None:
    # Given the same outcome computed twice (e.g. after a redelivery) / Then the ids agree
    first = event_id(DEFAULT_SOURCE, REQUEST_ID, SUCCEEDED_TYPE)
    assert first == event_id(DEFAULT_SOURCE, REQUEST_ID, SUCCEEDED_TYPE)
    assert uuid.UUID(first).version == 5


def test_the_event_factories_use_the_deterministic_id() -> None:
    # Given the same outcome wrapped twice / Then both envelopes carry the same id
    assert succeeded_event(success()).id == succeeded_event(success()).id
    assert failed_event(failure()).id == event_id(DEFAULT_SOURCE, REQUEST_ID, FAILED_TYPE)


@pytest.mark.parametrize(
    ("source", "request_id", "event_type"),
    [
        pytest.param("urn:debit-worker:eu-1", REQUEST_ID, SUCCEEDED_TYPE, id="other-source"),
        pytest.param(DEFAULT_SOURCE, "fee-2026-12", SUCCEEDED_TYPE, id="other-request"),
        pytest.param(DEFAULT_SOURCE, REQUEST_ID, FAILED_TYPE, id="other-outcome"),
    ],
)
def test_changing_source_request_or_type_changes_the_event_id(
    source: str, request_id: str, event_type: str
) -> None:
    assert event_id(source, request_id, event_type) != event_id(
        DEFAULT_SOURCE, REQUEST_ID, SUCCEEDED_TYPE
    )


def test_success_and_failure_of_one_request_have_different_ids() -> None:
    # Given both outcomes of one request (only one is ever published, but ids must not clash)
    assert succeeded_event(success()).id != failed_event(failure()).id


def test_ids_do_not_collide_when_fields_could_be_shifted() -> None:
    # Given (source, request_id) pairs that concatenate to the same text without a separator
    assert event_id("urn:a", "b-1", SUCCEEDED_TYPE) != event_id("urn:ab", "-1", SUCCEEDED_TYPE)


def test_an_envelope_is_about_its_request_and_points_at_its_data_schema() -> None:
    # Given an outcome / When wrapped / Then subject, time and dataschema follow the data
    ok, ko = succeeded_event(success()), failed_event(failure())
    assert (ok.subject, ok.time, ok.type) == (REQUEST_ID, AT, SUCCEEDED_TYPE)
    assert (ko.subject, ko.time, ko.type) == (REQUEST_ID, AT, FAILED_TYPE)
    ids = {spec.schema_id for spec in SCHEMA_FILES}
    assert {ok.dataschema, ko.dataschema} == {SUCCEEDED_DATASCHEMA, FAILED_DATASCHEMA}
    assert {SUCCEEDED_DATASCHEMA, FAILED_DATASCHEMA} <= ids


@pytest.mark.parametrize("code", list(FailureCode), ids=str)
def test_every_failure_code_has_a_catalogue_entry(code: FailureCode) -> None:
    # Given a failure code / Then producers are told what it means and what to do
    info = CATALOGUE[code]
    assert info.meaning.strip()
    assert info.producer_action.strip()
    assert code.retry_may_succeed is info.retry_may_succeed


def test_the_catalogue_has_no_entry_without_a_code() -> None:
    assert set(CATALOGUE) == set(FailureCode)
