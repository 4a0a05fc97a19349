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
from worker.domain.producer_limits import ProducerPolicy
from worker.settings import SettingsError, load_settings
from worker.transport.authentication import (
    RECEIVED_AT_HEADER,
    Authenticator,
    Unauthorized,
    carried_headers,
)

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


# --- operators' replays: vouched for by the operator, judged by the producer --------------

OPERATOR = Signer("ops", "o1", "ops-secret")
WITH_OPERATOR = Authenticator(
    keys={**AUTH.keys, "ops": {OPERATOR.key_id: OPERATOR.secret}, "team": {"t1": "team-secret"}},
    policies={
        **AUTH.policies,
        "ops": ProducerPolicy(may_replay=True, allowed_reasons=frozenset()),
    },
    max_age_seconds=300,
)
A_DAY_AGO = datetime(2026, 11, 14, 12, 0, tzinfo=UTC)


def replayed(
    original: dict[str, str],
    *,
    operator: Signer = OPERATOR,
    first_received: datetime = A_DAY_AGO,
    body: bytes = BODY,
) -> dict[str, str]:
    """A dead letter replayed now: its own headers, the operator's five, the intake's stamp."""
    vouched = operator.replay_headers_for(
        body,
        received_at=f"{first_received.timestamp():.3f}",
        original_signature=original.get(SIGNATURE_HEADER, ""),
        timestamp=int(NOW.timestamp()),
    )
    return {**original, **vouched, RECEIVED_AT_HEADER: f"{NOW.timestamp():.3f}"}


def test_a_replay_is_judged_by_its_producers_signature_at_its_first_receipt() -> None:
    # Given a command billing signed a day ago, received then, and dead-lettered
    headers = replayed(signed(at=A_DAY_AGO))
    # When the operator's replay arrives now
    verified = WITH_OPERATOR.verify(BODY, headers, NOW)
    # Then it is billing's command, under billing's policy (not the operator's)
    assert verified is not None
    assert (verified.producer, verified.key_id) == ("billing", ACTIVE.key_id)
    assert verified.policy == WITH_OPERATOR.policies["billing"]


@pytest.mark.parametrize(
    ("headers", "why"),
    [
        (replayed({}), "never signed"),
        (replayed(signed(at=A_DAY_AGO), operator=Signer("team", "t1", "team-secret")), "may not"),
        (replayed(signed(at=A_DAY_AGO), operator=Signer("ops", "o1", "guess")), "replay signature"),
        (replayed(signed(at=A_DAY_AGO), first_received=NOW), "window"),
        (
            {**replayed(signed(at=A_DAY_AGO)), "x-debit-replay-received-at": str(NOW.timestamp())},
            "replay signature",
        ),
        (replayed(signed(Signer("billing", "2026-11", "guess"), at=A_DAY_AGO)), "does not match"),
    ],
    ids=[
        "unsigned-command",
        "operator-without-may-replay",
        "forged-replay",
        "signature-outside-window-at-first-receipt",
        "receipt-time-altered",
        "forged-producer-signature",
    ],
)
def test_a_replay_never_makes_a_command_its_producer_did_not_validly_sign_acceptable(
    headers: dict[str, str], why: str
) -> None:
    with pytest.raises(Unauthorized, match=why):
        WITH_OPERATOR.verify(BODY, headers, NOW)


@pytest.mark.parametrize("stamp", ["nan", "inf", "-inf", "NaN", "1e999", "soon"])
def test_a_receipt_time_that_is_not_a_finite_number_is_refused(stamp: str) -> None:
    # Given a validly signed command whose receipt stamp is not a finite number
    headers = {**signed(), RECEIVED_AT_HEADER: stamp}
    # When it is verified / Then it is refused, never compared as inside the window
    with pytest.raises(Unauthorized, match="finite"):
        AUTH.verify(BODY, headers, NOW)


@pytest.mark.parametrize("bad", ["bill\ning", "billing\n2026-11", "", "x" * 65, "bill ing"])
def test_ids_outside_the_safe_alphabet_cannot_sign_or_be_verified(bad: str) -> None:
    # Given an id that could blur the lines of the signed text
    # When it signs / Then the signer refuses
    with pytest.raises(ValueError, match="not a valid id"):
        Signer(bad, "k1", "s").headers_for(BODY)
    # And a header carrying it is refused as unauthorized, not a crash
    headers = {**signed(), PRODUCER_HEADER: bad}
    with pytest.raises(Unauthorized, match=r"A-Z|not signed"):
        AUTH.verify(BODY, headers, NOW)


@pytest.mark.parametrize(
    "setting",
    [
        {"producer_keys": {"bill\ning": {"k1": "s"}}},
        {"producer_keys": {"billing": {"k 1": "s"}}},
        {"producers": {"bill\ning": {}}},
        {"producer_id": "billing\n"},
        {"producer_key_id": "2026/11"},
    ],
    ids=["producer-key-producer", "producer-key-id", "policy-producer", "signing-as", "key-id"],
)
def test_a_setting_naming_an_id_outside_the_safe_alphabet_is_refused(
    setting: dict[str, object],
) -> None:
    # Given / When the settings name such an id / Then they are refused, naming the rule
    with pytest.raises(SettingsError, match="A-Z a-z 0-9"):
        load_settings(stripe_api_key="sk_test_x", **setting)
