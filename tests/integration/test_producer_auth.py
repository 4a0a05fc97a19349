"""Only authorised producers move money: every refusal through the real broker, replays,
commands altered in flight, and per-producer limits under a flood from many connections."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from typing import Any

import amqp
import pytest

from tests.integration.conftest import (
    DEFAULT_KEY,
    MAX_AGE_SECONDS,
    PRODUCER_KEYS,
    Key,
    PlainAmqp,
    connect,
    new_id,
    payments_for,
    sign,
)
from worker.adapters.ledger import Ledger
from worker.ops.demo import command_body
from worker.sandbox import RunningSandbox

pytestmark = pytest.mark.integration

US = "acct_1ExpressUS00000001"
LIMITED = Key("limited", "l1", PRODUCER_KEYS["limited"]["l1"])
FLOOD = Key("flood", "f1", PRODUCER_KEYS["flood"]["f1"])


def _body(request_id: str, amount: int = 1000, **extra: Any) -> bytes:
    return json.dumps(command_body(request_id, US, amount, **extra)).encode()


Forge = Callable[[bytes], tuple[bytes, dict[str, str]]]


def _unsigned(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, {}


def _unknown_producer(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign(body, Key("mallory", "k1", "guessed"))


def _unknown_key(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign(body, Key("itest", "k9", "guessed"))


def _retired_key(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign(body, Key("itest", "k0", "itest-secret-zero"))


def _tampered_body(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body.replace(b'"amount": 1000', b'"amount": 9000'), sign(body, DEFAULT_KEY)


def _tampered_header(body: bytes) -> tuple[bytes, dict[str, str]]:
    headers = sign(body, DEFAULT_KEY)
    return body, {**headers, "x-debit-timestamp": str(int(headers["x-debit-timestamp"]) + 1)}


def _too_old(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign(body, DEFAULT_KEY, int(time.time() - 10 * 60))


def _other_producers_secret(body: bytes) -> tuple[bytes, dict[str, str]]:
    return body, sign(body, Key("itest", "k2", PRODUCER_KEYS["flood"]["f1"]))


@pytest.mark.parametrize(
    "forge",
    [
        _unsigned,
        _unknown_producer,
        _unknown_key,
        _retired_key,
        _tampered_body,
        _tampered_header,
        _too_old,
        _other_producers_secret,
    ],
    ids=lambda forge: forge.__name__.strip("_"),
)
def test_an_unauthorised_command_is_refused_never_claimed_and_moves_no_money(
    broker: PlainAmqp, sandbox: RunningSandbox, ledger: Ledger, forge: Forge
) -> None:
    # Given a command that no active key of a known producer vouches for
    request_id = new_id("unauth")
    body, headers = forge(_body(request_id))
    # When it is published to the command exchange
    broker.publish(body, headers=headers)
    # Then it fails as unauthorized, is not in the ledger, and Stripe holds no payment
    event = broker.event_for(request_id)
    assert event["data"]["code"] == "unauthorized", event["data"]["message"]
    assert ledger.requests.get(request_id) is None
    assert payments_for(sandbox, request_id) == []
    # And the request id is not used up: properly signed, it goes through
    broker.publish(_body(request_id))
    assert broker.events_for(request_id, 2)[1]["type"].endswith("succeeded.v1")


def test_both_keys_of_a_rotation_are_accepted(broker: PlainAmqp) -> None:
    for key_id in ("k1", "k2"):
        request_id = new_id(f"rotate-{key_id}")
        body = _body(request_id)
        broker.publish(
            body, headers=sign(body, Key("itest", key_id, PRODUCER_KEYS["itest"][key_id]))
        )
        assert broker.event_for(request_id)["type"].endswith("succeeded.v1")


def test_a_signed_command_replayed_after_the_window_moves_no_money_and_keeps_its_outcome(
    broker: PlainAmqp, sandbox: RunningSandbox
) -> None:
    # Given a signed command that succeeded near the end of its window
    request_id = new_id("replay")
    body = _body(request_id)
    headers = sign(body, DEFAULT_KEY, int(time.time() - MAX_AGE_SECONDS + 3))
    broker.publish(body, headers=headers)
    first = broker.event_for(request_id)
    assert first["type"].endswith("succeeded.v1")
    # When someone who captured it publishes the same message again, after the window
    time.sleep(4)
    broker.publish(body, headers=headers)
    # Then only the recorded outcome comes back (same event id), and Stripe holds one payment
    replayed = broker.events_for(request_id, 2)[1]
    assert replayed["id"] == first["id"]
    assert len(payments_for(sandbox, request_id)) == 1


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"amount": 1000, "reason": "adjustment"}, "reason"),
        ({"amount": 5001}, "per-debit maximum"),
    ],
    ids=["reason-not-allowed", "over-per-debit-max"],
)
def test_a_command_outside_its_producers_policy_is_refused(
    broker: PlainAmqp, sandbox: RunningSandbox, fields: dict[str, Any], why: str
) -> None:
    request_id = new_id("policy")
    body = json.dumps(command_body(request_id, US, **fields)).encode()
    broker.publish(body, headers=sign(body, LIMITED))
    data = broker.event_for(request_id)["data"]
    assert data["code"] == "producer_limit_exceeded"
    assert why in data["message"]
    assert payments_for(sandbox, request_id) == []


def test_the_daily_maximum_refuses_what_would_exceed_it(broker: PlainAmqp) -> None:
    # Given a producer with 80.00 USD a day that debited 50.00
    first, second = new_id("daily"), new_id("daily")
    body = _body(first, 5000)
    broker.publish(body, headers=sign(body, LIMITED))
    assert broker.event_for(first)["type"].endswith("succeeded.v1")
    # When it asks for another 50.00 / Then it is refused
    body = _body(second, 5000)
    broker.publish(body, headers=sign(body, LIMITED))
    data = broker.event_for(second)["data"]
    assert data["code"] == "producer_limit_exceeded"
    assert "daily maximum" in data["message"]


def test_the_daily_maximum_holds_when_one_producer_floods_from_many_connections(
    broker: PlainAmqp, sandbox: RunningSandbox, vhost: str
) -> None:
    # Given a producer allowed 100.00 USD a day, and 8 connections each sending 5 x 10.00
    ids = [[new_id(f"flood{t}") for _ in range(5)] for t in range(8)]

    def flood(mine: list[str]) -> None:
        connection = connect(vhost)
        channel = connection.channel()
        channel.confirm_select()
        for request_id in mine:
            body = _body(request_id, 1000)
            message = amqp.Message(
                body,
                content_type="application/json",
                delivery_mode=2,
                application_headers=sign(body, FLOOD),
            )
            channel.basic_publish(message, "debits.commands", "debit.requested", mandatory=True)
        connection.close()

    # When they publish all at once
    threads = [threading.Thread(target=flood, args=(mine,)) for mine in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every command is answered, and exactly 100.00 moved
    events = [broker.event_for(request_id, timeout=60) for mine in ids for request_id in mine]
    succeeded = [e for e in events if e["type"].endswith("succeeded.v1")]
    refused = {e["data"].get("code") for e in events if e not in succeeded}
    assert len(succeeded) == 10
    assert refused == {"producer_limit_exceeded"}
    moved = sum(p["amount"] for mine in ids for r in mine for p in payments_for(sandbox, r))
    assert moved == 10_000
