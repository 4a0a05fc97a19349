"""The admin routes, seed files, the runner and the CLI."""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import pytest
import stripe
import yaml
from click.testing import CliRunner

from tests.sandbox.helpers import EXPRESS_US, PLATFORM, debit
from worker.sandbox import AccountSeed, Faults, RunningSandbox, load_seed, running_sandbox
from worker.sandbox.cli import sandbox as sandbox_command
from worker.sandbox.runner import NotLoopback, is_loopback, require_loopback
from worker.sandbox.seed import Controller, Losses

COMPOSE_FILE = Path(__file__).resolve().parents[2] / "docker-compose.yml"
DEFAULT_IDS = {
    "acct_1ExpressUS00000001",
    "acct_1CustomLegacy000001",
    "acct_1StandardUS0000001",
    "acct_1ExpressJP00000001",
    "acct_1ExpressHK00000001",
    "acct_1ExpressCA00000001",
    "acct_1LowBalanceUS00001",
}


def test_the_default_seed_holds_the_ids_the_worker_relies_on() -> None:
    # Given the built-in seed
    seed = load_seed()

    # When its ids are listed
    # Then the platform, the seven accounts and the two refunds are there
    assert seed.platform.id == PLATFORM
    assert {account.id for account in seed.accounts} >= DEFAULT_IDS
    assert {refund.id for refund in seed.refunds} >= {
        "re_1RefundUSD0000000001",
        "re_1RefundEUR0000000001",
    }
    legacy = next(a for a in seed.accounts if a.id == "acct_1CustomLegacy000001")
    assert legacy.controller is None


def _two_debits_one_hit_by_a_500_and_an_account_read(
    sandbox: RunningSandbox, client: stripe.StripeClient, prefix: str
) -> None:
    sandbox.admin.set_faults(script=("server_error",))
    with pytest.raises(stripe.APIError):
        debit(client, f"{prefix}-1")
    debit(client, f"{prefix}-2")
    client.v1.accounts.retrieve(EXPRESS_US)


def test_the_state_counts_requests_by_endpoint_and_faults_by_kind(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given two debits, one of them hit by a 500
    _two_debits_one_hit_by_a_500_and_an_account_read(sandbox, client, "s")

    # When the state is read
    state = sandbox.admin.state()

    # Then it counts them
    assert state.requests == {"POST /v1/charges": 2, "GET /v1/accounts/{account}": 1}
    assert state.faults_injected == {"server_error": 1}
    assert len(state.payments) == len(state.transfers) == 1
    assert state.idempotency_keys == 2


def test_the_counts_alone_match_the_states_counts(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit hit by a 500, one that went through, and an account read
    _two_debits_one_hit_by_a_500_and_an_account_read(sandbox, client, "c")

    # When only the counts are read
    counts = sandbox.admin.counts()

    # Then they are the state's, without its objects
    assert counts.requests == {"POST /v1/charges": 2, "GET /v1/accounts/{account}": 1}
    assert counts.faults_injected == {"server_error": 1}
    state = sandbox.admin.state()
    assert (counts.requests, counts.faults_injected) == (state.requests, state.faults_injected)


def test_reset_returns_to_the_seed(sandbox: RunningSandbox, client: stripe.StripeClient) -> None:
    # Given a debit and changed faults
    debit(client, "r-1")
    sandbox.admin.set_faults(latency_ms=5)

    # When the sandbox is reset
    sandbox.admin.reset()

    # Then money, objects, keys and faults are the seed's again
    state = sandbox.admin.state()
    assert state.payments == []
    assert state.available(PLATFORM, "usd") == 0
    assert state.faults == Faults()
    assert not debit(client, "r-1").last_response.headers.get("Idempotent-Replayed")  # type: ignore[union-attr]


def test_an_account_added_at_runtime_can_be_debited(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a new Express account in Canada added through the admin route
    sandbox.admin.put_account(
        AccountSeed(
            id="acct_1NewCanada000000001",
            country="CA",
            default_currency="cad",
            controller=Controller(losses=Losses(payments="application")),
            available={"cad": 700},
        )
    )

    # When it is debited
    payment = debit(client, source="acct_1NewCanada000000001", currency="cad", amount=700)

    # Then the debit succeeds and the books still balance with the new money counted
    assert payment.status == "succeeded"
    assert sandbox.admin.state().minted["cad"] == 1_000_000 + 700


def test_bad_fault_settings_are_refused_by_the_admin_route(sandbox: RunningSandbox) -> None:
    # Given fault shares adding up to more than one
    body = json.dumps({"server_error_share": 0.8, "drop_after_share": 0.5}).encode()
    request = urllib.request.Request(sandbox.url + "/_sandbox/faults", data=body, method="POST")

    # When they are posted
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(request, timeout=5)

    # Then the route refuses them and the faults are unchanged
    assert refused.value.code == 400
    assert sandbox.admin.faults() == Faults()


def test_a_sandbox_starts_from_a_json_seed_with_its_own_key(tmp_path: Path) -> None:
    # Given a JSON seed with a GB platform and one Irish account
    seed = {
        "platform": {"id": "acct_1PlatformGB000000001", "country": "GB", "default_currency": "gbp"},
        "accounts": [
            {
                "id": "acct_1ExpressIE00000001",
                "country": "IE",
                "default_currency": "eur",
                "controller": {"losses": {"payments": "application"}},
                "available": {"eur": 9_000},
            }
        ],
    }
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed))

    # When a sandbox runs from it with another API key
    with running_sandbox(path, api_key="sk_test_other") as other:
        client = stripe.StripeClient(other.api_key, base_addresses={"api": other.url})
        payment = client.v1.charges.create(
            params={"source": "acct_1ExpressIE00000001", "amount": 9_000, "currency": "eur"}
        )
        state = other.admin.state()

    # Then the GB platform can debit the EU account (a supported corridor)
    assert payment.amount == 9_000
    assert state.balances["acct_1PlatformGB000000001"]["available"] == {"eur": 9_000}


def test_the_cli_explains_its_options() -> None:
    # Given the sandbox command
    # When its help is asked for
    result = CliRunner().invoke(sandbox_command, ["--help"])

    # Then it documents the port, seed, key and fault options
    assert result.exit_code == 0
    for option in ("--port", "--seed", "--api-key", "--rate-limit", "--drop-after-share"):
        assert option in result.output
    assert "12111" in result.output


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "", "192.168.1.20", "sandbox.example"])
def test_the_cli_refuses_a_non_loopback_address_naming_the_flag(host: str) -> None:
    # Given an address beyond this machine, without the explicit flag
    # When the sandbox is started on it
    result = CliRunner().invoke(sandbox_command, ["--host", host, "--port", "0"])
    # Then it refuses with one `Error:` line naming the flag, and serves nothing
    assert result.exit_code == 1
    [line] = result.output.splitlines()
    assert line.startswith("Error: ")
    assert "--allow-non-loopback" in line


@pytest.mark.parametrize("host", ["0.0.0.0", "10.1.2.3"])
def test_the_runner_refuses_a_non_loopback_address_unless_allowed(host: str) -> None:
    with pytest.raises(NotLoopback, match="--allow-non-loopback"), running_sandbox(host=host):
        pytest.fail("the sandbox started")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "localhost"])
def test_loopback_addresses_need_no_flag(host: str) -> None:
    assert is_loopback(host)


def test_with_the_flag_the_sandbox_listens_beyond_loopback() -> None:
    # Given the explicit flag / When the sandbox serves on every interface
    with running_sandbox(host="0.0.0.0", allow_non_loopback=True) as server:
        # Then it answers
        assert server.admin.healthy()


def test_the_compose_sandbox_command_passes_the_loopback_check() -> None:
    # Given the sandbox service's command in docker-compose.yml (0.0.0.0 in its container)
    compose = yaml.safe_load(COMPOSE_FILE.read_text(encoding="utf-8"))
    name, *args = compose["services"]["sandbox"]["command"]
    assert name == "sandbox"
    # When its options are parsed as the CLI parses them
    params = sandbox_command.make_context("sandbox", list(args)).params
    # Then the check lets it listen there, as the worker container must reach it
    require_loopback(params["host"], allow_non_loopback=params["allow_non_loopback"])
