"""Producer signatures: the documented test vector, and every way a signature is refused."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from schemas.signing import (
    KEY_ID_HEADER,
    PRODUCER_HEADER,
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Signer,
    signature,
)
from worker.authentication import (
    RECEIVED_AT_HEADER,
    Authenticator,
    Unauthorized,
    carried_headers,
)
from worker.producer_limits import ProducerPolicy

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text("utf-8")
NOW = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
BODY = b'{"request_id":"req-1","account":"acct_1Debtor","amount":2500,"currency":"usd"}'
ACTIVE = Signer("billing", "2026-11", "new-secret")
OLDER = Signer("billing", "2026-05", "old-secret")
RETIRED = Signer("billing", "2025-11", "retired-secret")
AUTH = Authenticator(
    keys={"billing": {ACTIVE.key_id: ACTIVE.secret, OLDER.key_id: OLDER.secret}},
    policies={"billing": ProducerPolicy(retired_keys=frozenset({RETIRED.key_id}))},
    max_age_seconds=300,
)


def signed(signer: Signer = ACTIVE, body: bytes = BODY, at: datetime = NOW) -> dict[str, str]:
    return signer.headers_for(body, int(at.timestamp()))


def test_the_test_vector_in_the_contract_is_what_the_algorithm_computes() -> None:
    # Given the vector's inputs as the contract states them
    section = CONTRACT[CONTRACT.index("Test vector") :]
    body = re.search(r"```json\n(.*?)\n```", section, re.DOTALL)
    expected = re.search(r"`(v1=[0-9a-f]{64})`", section)
    assert body is not None
    assert expected is not None
    raw = body.group(1).encode()
    assert f"these exact {len(raw)}" in section
    # When it is signed / Then the documented signature comes out
    assert signature("test-secret-do-not-use", "billing", "2026-11", 1795000000, raw) == (
        expected.group(1)
    )


@pytest.mark.parametrize("signer", [ACTIVE, OLDER], ids=["new-key", "old-key"])
def test_every_active_key_of_a_producer_is_accepted_during_a_rotation(signer: Signer) -> None:
    verified = AUTH.verify(BODY, signed(signer), NOW)
    assert verified is not None
    assert (verified.producer, verified.key_id) == ("billing", signer.key_id)


def _tampered_header() -> dict[str, str]:
    return {**signed(), KEY_ID_HEADER: OLDER.key_id}


@pytest.mark.parametrize(
    ("body", "headers", "why"),
    [
        (BODY, {}, "not signed"),
        (BODY, signed(Signer("intruder", "k", "x")), "unknown producer"),
        (BODY, signed(Signer("billing", "2099-01", "x")), "unknown key"),
        (BODY, signed(RETIRED), "retired"),
        (BODY.replace(b"2500", b"9500"), signed(), "does not match"),
        (BODY, _tampered_header(), "does not match"),
        (BODY, {**signed(), TIMESTAMP_HEADER: "soon"}, "timestamp"),
        (BODY, signed(at=datetime(2026, 11, 15, 11, 54, tzinfo=UTC)), "window"),
        (BODY, signed(at=datetime(2026, 11, 15, 12, 6, tzinfo=UTC)), "window"),
        (BODY, {**signed(), SIGNATURE_HEADER: "v1=" + "0" * 64}, "does not match"),
        (BODY, {PRODUCER_HEADER: "billing"}, "not signed"),
    ],
    ids=[
        "unsigned",
        "unknown-producer",
        "unknown-key",
        "retired-key",
        "tampered-body",
        "tampered-header",
        "bad-timestamp",
        "too-old",
        "from-the-future",
        "forged",
        "no-signature",
    ],
)
def test_a_command_that_fails_the_check_is_unauthorized_with_a_reason(
    body: bytes, headers: dict[str, str], why: str
) -> None:
    with pytest.raises(Unauthorized, match=why):
        AUTH.verify(body, headers, NOW)


def test_the_window_is_measured_from_the_intakes_receipt_so_retries_pass_and_replays_fail() -> None:
    # Given a command signed at NOW and received by the intake a second later
    headers = {**signed(), RECEIVED_AT_HEADER: str(NOW.timestamp() + 1)}
    # When a retry verifies it an hour later / Then it still passes
    later = datetime(2026, 11, 15, 13, 0, tzinfo=UTC)
    assert AUTH.verify(BODY, headers, later) is not None
    # But the same message received again an hour later (a replay) is refused
    replay = {**signed(), RECEIVED_AT_HEADER: str(later.timestamp())}
    with pytest.raises(Unauthorized, match="window"):
        AUTH.verify(BODY, replay, later)


def test_unsigned_commands_pass_only_when_signatures_are_optional() -> None:
    optional = Authenticator(keys=AUTH.keys, policies=AUTH.policies, require_signatures=False)
    assert optional.verify(BODY, {}, NOW) is None
    # And a signature that is there is still checked
    with pytest.raises(Unauthorized):
        optional.verify(BODY.replace(b"2500", b"1"), signed(), NOW)


def test_the_signer_never_shows_its_secret_in_its_repr() -> None:
    assert ACTIVE.secret not in repr(ACTIVE)


def test_a_signature_header_that_is_not_utf8_is_carried_replaced_never_crashing_the_intake() -> (
    None
):
    # Given a message whose signature header is a byte array that is not UTF-8
    headers = {SIGNATURE_HEADER: b"v1=\xff\xfe", PRODUCER_HEADER: "billing"}
    # When the intake picks the headers to carry to the task
    carried = carried_headers(headers)
    # Then it gets text (the signature will simply not verify), not an exception
    assert carried[SIGNATURE_HEADER] == "v1=\ufffd\ufffd"
    assert carried[PRODUCER_HEADER] == "billing"
