"""From raw bytes to a DebitRequested: what is dead-lettered (Undeliverable), what is answered
with invalid_request (InvalidCommand), and that nothing else ever escapes."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas.commands import DebitRequested
from worker.transport.parsing import (
    MAX_BODY_BYTES,
    InvalidCommand,
    Undeliverable,
    parse_command,
    screen,
)

from .fakes import ACCOUNT_ID, a_body


def invalid(body: bytes | str) -> InvalidCommand:
    with pytest.raises(InvalidCommand) as raised:
        parse_command(body)
    return raised.value


def fields_of(error: InvalidCommand) -> list[str]:
    return [e.field for e in error.field_errors]


# --- what cannot be answered ----------------------------------------------------------------


UNREADABLE = {
    "not-utf8": b'{"request_id": "req-1", "x": "\xff"}',
    "not-json": b'{"request_id": "req-1",',
    "array": b'["req-1"]',
    "string": b'"req-1"',
    "number": b"42",
    "null": b"null",
    "empty": b"",
    "missing-request-id": b'{"account": "acct_1"}',
    "request-id-not-a-string": b'{"request_id": 42}',
    "request-id-with-spaces": b'{"request_id": "req 1"}',
    "request-id-too-long": json.dumps({"request_id": "r" * 129}).encode(),
    "request-id-leading-dash": b'{"request_id": "-req"}',
    "deeply-nested": b'{"request_id": "req-1", "metadata": ' + b"[" * 30_000 + b"]" * 30_000 + b"}",
    "too-large": a_body(description="x" * MAX_BODY_BYTES).encode(),
}


@pytest.mark.parametrize("body", UNREADABLE.values(), ids=UNREADABLE.keys())
def test_a_body_without_a_usable_request_id_is_undeliverable(body: bytes) -> None:
    # Given a body no request_id can be read from (or one too big or deep to read at all)
    # When it is screened and parsed
    # Then both say undeliverable
    with pytest.raises(Undeliverable):
        screen(body)
    with pytest.raises(Undeliverable):
        parse_command(body)


def test_the_size_limit_counts_utf8_bytes_not_characters() -> None:
    # Given a str body whose characters fit the limit but whose UTF-8 bytes do not
    body = json.dumps({"request_id": "req-1", "x": "é" * (MAX_BODY_BYTES // 2)}, ensure_ascii=False)
    assert len(body) < MAX_BODY_BYTES < len(body.encode())

    # When / Then it is too large
    with pytest.raises(Undeliverable, match="limit"):
        parse_command(body)


def test_screen_returns_the_request_id_of_a_deliverable_body() -> None:
    # Given / When / Then a readable request_id is returned, even if the rest is invalid
    assert screen(a_body()) == "req-1"
    assert screen(b'{"request_id": "req-2", "amount": "lots"}') == "req-2"


# --- what is answered with invalid_request ----------------------------------------------------


def test_a_valid_body_parses_into_the_command() -> None:
    # Given / When a valid body (bytes or str) is parsed
    command = parse_command(a_body().encode())

    # Then the command carries its fields
    assert (command.request_id, command.account, command.amount) == ("req-1", ACCOUNT_ID, 2500)
    assert parse_command(a_body()) == command


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"currency": "USD"}, "currency"),
        ({"amount": 0}, "amount"),
        ({"amount": "2500"}, "amount"),
        ({"amount": 25.0}, "amount"),
        ({"account": "cus_1"}, "account"),
        ({"reason": "gift"}, "reason"),
        ({"refund": "re_1"}, "refund"),
        ({"reason": "refund_recovery"}, "refund"),
        ({"metadata": {"request_id": "x"}}, "metadata"),
        ({"requested_at": "2026-11-15T12:00:00"}, "requested_at"),
        ({"surprise": 1}, "surprise"),
    ],
)
def test_a_body_with_a_readable_request_id_and_a_bad_field_names_that_field(
    changes: dict[str, Any], field: str
) -> None:
    # Given a body whose request_id is fine and one field is not
    # When it is parsed
    error = invalid(a_body(**changes))

    # Then the error belongs to the request, and names the field
    assert error.request_id == "req-1"
    assert fields_of(error) == [field]
    assert field in str(error)


def test_a_missing_field_is_named() -> None:
    # Given a body without amount
    error = invalid(a_body(amount=None))

    # Then amount is named as missing
    assert fields_of(error) == ["amount"]
    assert error.field_errors[0].message == "Field required"


def test_only_short_well_typed_fields_are_echoed_back() -> None:
    # Given an invalid body with an overlong account, a string amount, a boolean-free
    # currency and a description and metadata that are never echoed
    error = invalid(
        a_body(
            account="acct_" + "x" * 200,
            amount="2500",
            currency="usd",
            description="secret",
            metadata={"k": "v"},
        )
    )

    # Then only the safe fields come back
    assert error.partial == {"currency": "usd", "reason": "platform_charge"}


@pytest.mark.parametrize("amount", [True, 10**15, -(10**15)])
def test_an_amount_that_is_not_a_plausible_integer_is_not_echoed(amount: object) -> None:
    # Given / When an invalid body carries an implausible amount
    error = invalid(a_body(amount=amount))

    # Then it is left out of the echo
    assert "amount" not in error.partial


def test_a_moderately_nested_value_is_an_invalid_field_not_a_crash() -> None:
    # Given nesting deep enough for the validator's limit but not for json's
    body = b'{"request_id": "req-1", "metadata": ' + b"[" * 500 + b"]" * 500 + b"}"

    # When / Then it is an invalid command of request req-1
    assert invalid(body).request_id == "req-1"


def test_an_integer_too_long_for_python_is_handled_like_any_bad_input() -> None:
    # Given a body whose amount has 5000 digits (well under the size limit)
    body = b'{"request_id": "req-1", "amount": ' + b"9" * 5000 + b"}"

    # When it is parsed
    # Then it is undeliverable or invalid, never another error
    with pytest.raises((Undeliverable, InvalidCommand)):
        parse_command(body)


# --- properties -----------------------------------------------------------------------------

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**20), max_value=10**20)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
field_names = st.sampled_from(
    [
        "request_id",
        "account",
        "amount",
        "currency",
        "reason",
        "refund",
        "description",
        "metadata",
        "requested_at",
        "other",
    ]
)
plausible = st.fixed_dictionaries(
    {"request_id": st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")},
    optional={
        "account": st.sampled_from([ACCOUNT_ID, "acct_", "x"]) | json_values,
        "amount": st.integers(min_value=-5, max_value=10**13) | json_values,
        "currency": st.sampled_from(["usd", "USD", "eu"]) | json_values,
        "reason": st.sampled_from(["platform_charge", "refund_recovery", "adjustment"])
        | json_values,
        "refund": st.sampled_from(["re_1", "pyr_1", None]) | json_values,
        "metadata": st.dictionaries(st.text(max_size=45), st.text(max_size=5)) | json_values,
        "requested_at": st.sampled_from(["2026-11-15T12:00:00Z", "2026-11-15"]) | json_values,
    },
)


def _only_expected_outcomes(body: bytes | str) -> None:
    """Parsing `body` raises nothing but the two documented errors (any other exception
    fails the test), and each outcome is one the worker can act on."""
    outcome: DebitRequested | InvalidCommand
    try:
        outcome = parse_command(body)
    except Undeliverable:
        return  # dead-lettered as it came
    except InvalidCommand as invalid:
        outcome = invalid
    if isinstance(outcome, InvalidCommand):
        # answered with invalid_request: to a request, saying which fields are wrong
        assert outcome.request_id
        assert outcome.field_errors
    else:
        assert outcome.amount > 0


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_parse_or_raise_only_undeliverable_or_invalid(body: bytes) -> None:
    # Given arbitrary bytes
    # When / Then parsing succeeds or raises one of the two documented errors
    _only_expected_outcomes(body)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(field_names, json_values, max_size=8))
def test_any_json_object_parses_or_raises_only_undeliverable_or_invalid(
    value: dict[str, Any],
) -> None:
    # Given an arbitrary JSON object
    # When / Then parsing succeeds or raises one of the two documented errors
    _only_expected_outcomes(json.dumps(value))


@settings(max_examples=300, deadline=None)
@given(plausible)
def test_a_readable_request_id_is_never_undeliverable(value: dict[str, Any]) -> None:
    # Given a JSON object with a valid request_id and anything else
    body = json.dumps(value).encode()

    # When it is parsed
    # Then it is a command or an invalid command of that very request
    outcome: DebitRequested | InvalidCommand
    try:
        outcome = parse_command(body)
    except InvalidCommand as error:
        outcome = error
    assert outcome.request_id == value["request_id"]
    if isinstance(outcome, InvalidCommand):
        assert outcome.field_errors
        assert set(outcome.partial) <= {"account", "amount", "currency", "reason", "refund"}


@pytest.mark.parametrize(
    "body",
    [
        b'{"request_id":"dup-1","account":"acct_1","amount":100,"amount":100000,"currency":"usd"}',
        b'{"request_id":"dup-1","account":"acct_1","amount":1,"currency":"usd",'
        b'"metadata":{"invoice":"a","invoice":"b"}}',
    ],
    ids=["top-level", "nested"],
)
def test_a_command_with_a_name_given_twice_is_invalid_naming_it(body: bytes) -> None:
    # Given a body in which one object names a field twice (parsers disagree on which counts)
    # When it is parsed / Then it is an invalid command of that request, naming the field
    with pytest.raises(InvalidCommand) as refused:
        parse_command(body)
    assert refused.value.request_id == "dup-1"
    assert any("more than once" in e.message for e in refused.value.field_errors)


def test_a_body_whose_request_id_is_given_twice_is_undeliverable() -> None:
    # Given two request ids in one body: no one request can be answered
    body = b'{"request_id":"a-1","request_id":"b-2","amount":1}'
    # When it is screened / Then it is dead-lettered, naming why
    with pytest.raises(Undeliverable, match="more than once"):
        screen(body)
