"""Debits Stripe carries out although it answered 500: at once (`executed_server_error`)
or later on the sandbox clock (`executed_late`). Either way the key stores the 500."""

from __future__ import annotations

from collections import Counter

import pytest
import stripe
from click.testing import CliRunner
from pydantic import ValidationError

from tests.sandbox.helpers import EXPRESS_US, LOW_BALANCE_US, SEEDED_USD, debit
from worker.sandbox import Faults, RunningSandbox
from worker.sandbox.cli import sandbox as sandbox_command
from worker.sandbox.faults import FaultInjector


def listed(client: stripe.StripeClient) -> list[stripe.Charge]:
    """The charges account debits made (the seeded sales are older than a day)."""
    return client.v1.charges.list(params={"created": {"gte": 1_760_000_000}}).data


def assert_replayed_500(error: stripe.APIError) -> None:
    assert error.http_status == 500
    assert error.error is not None
    assert error.error.type == "api_error"
    assert error.headers is not None
    assert error.headers.get("Idempotent-Replayed") == "true"


def test_an_executed_server_error_moves_the_money_but_answers_and_replays_500(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next debit is carried out but answered 500
    sandbox.admin.set_faults(script=("executed_server_error",))

    # When it is sent, and retried with the same key
    with pytest.raises(stripe.APIError) as failed:
        debit(client, "exec-500", amount=2_000)
    with pytest.raises(stripe.APIError) as again:
        debit(client, "exec-500", amount=2_000)

    # Then the client saw a 500, and the retry the stored 500 replayed
    assert failed.value.http_status == 500
    assert_replayed_500(again.value)
    # And Stripe holds the charge, its event with the key, and the money moved, once
    [charge] = listed(client)
    assert charge.amount == 2_000
    assert charge.metadata["debit_id"] == "dbt_test_1"
    [event] = client.v1.events.list().data
    assert event.request is not None
    assert event.request.idempotency_key == "exec-500"
    assert sandbox.admin.state().available(EXPRESS_US, "usd") == SEEDED_USD - 2_000
    assert sandbox.admin.state().faults_injected == {"executed_server_error": 1}


def test_an_executed_late_debit_appears_once_the_sandbox_clock_passes_its_time(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given the next debit is answered 500 and carried out 30 s later (the default)
    sandbox.admin.set_faults(script=("executed_late",))
    asked_at = sandbox.admin.state().clock["now"]

    # When it is sent
    with pytest.raises(stripe.APIError) as failed:
        debit(client, "exec-late", amount=3_000)

    # Then at first nothing happened: no charge, no event, no money moved
    assert failed.value.http_status == 500
    assert listed(client) == []
    assert client.v1.events.list().data == []
    assert sandbox.admin.state().available(EXPRESS_US, "usd") == SEEDED_USD
    assert sandbox.admin.state().late_debits == 1
    # And once the clock passes 30 s, the charge and its event are there, dated then
    sandbox.admin.advance_clock(31)
    [charge] = listed(client)
    assert asked_at + 30 - 1 <= charge.created <= asked_at + 31
    [event] = client.v1.events.list().data
    assert event.created == charge.created
    assert event.request is not None
    assert event.request.idempotency_key == "exec-late"
    assert client.v1.charges.retrieve(charge.id).amount == 3_000
    assert sandbox.admin.state().available(EXPRESS_US, "usd") == SEEDED_USD - 3_000
    # And a retry with the key still gets the stored 500, and makes nothing more
    with pytest.raises(stripe.APIError) as again:
        debit(client, "exec-late", amount=3_000)
    assert_replayed_500(again.value)
    assert len(listed(client)) == 1


def test_the_late_delay_is_configurable_and_a_get_sees_the_debit_once_due(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given late debits carried out 5 s after they are answered
    sandbox.admin.set_faults(script=("executed_late",), executed_late_seconds=5)
    with pytest.raises(stripe.APIError):
        debit(client, "exec-late-5")

    # When the clock moves 3 s, then 3 s more
    sandbox.admin.advance_clock(3)
    before = sandbox.admin.state()
    sandbox.admin.advance_clock(3)

    # Then it is not done at 3 s, and done at 6 s
    assert (before.late_debits, before.payments) == (1, [])
    assert len(listed(client)) == 1


def test_a_new_key_after_an_executed_500_debits_twice(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a debit carried out although it was answered 500
    sandbox.admin.set_faults(script=("executed_server_error",))
    with pytest.raises(stripe.APIError):
        debit(client, "first-key")

    # When the same debit is sent again under a new key
    debit(client, "second-key")

    # Then Stripe holds two charges for one debit: what reconciliation must find
    assert [c.metadata["debit_id"] for c in listed(client)] == ["dbt_test_1", "dbt_test_1"]


def test_a_late_debit_refused_when_it_falls_due_does_not_happen(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given a late debit of 400 from an account holding 500
    sandbox.admin.set_faults(script=("executed_late",))
    with pytest.raises(stripe.APIError):
        debit(client, "late-short", source=LOW_BALANCE_US, amount=400)
    # And another debit of 400 that empties the account first
    debit(client, "late-first", source=LOW_BALANCE_US, amount=400)

    # When the late debit falls due
    sandbox.admin.advance_clock(31)

    # Then Stripe's balance check refuses it: one charge only, and the refusal is counted
    assert len(listed(client)) == 1
    state = sandbox.admin.state()
    assert state.available(LOW_BALANCE_US, "usd") == 100
    assert state.faults_injected["executed_late_refused"] == 1


def test_scripted_executed_faults_wait_for_a_post(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given an executed_server_error at the head of the script
    sandbox.admin.set_faults(script=("executed_server_error",))

    # When a read comes first, then a debit
    client.v1.balance.retrieve()
    with pytest.raises(stripe.APIError):
        debit(client, "after-read")

    # Then the read was untouched and the debit carried it
    assert len(listed(client)) == 1


def test_executed_shares_apply_to_every_debit_they_cover(
    sandbox: RunningSandbox, client: stripe.StripeClient
) -> None:
    # Given every debit is carried out and answered 500, and reads are eligible too
    sandbox.admin.set_faults(executed_server_error_share=1.0)

    # When two debits are sent and the balance read
    for n in range(2):
        with pytest.raises(stripe.APIError):
            debit(client, f"share-{n}")
    client.v1.balance.retrieve()

    # Then both debits happened, and the read drew no fault
    assert len(listed(client)) == 2
    assert sandbox.admin.state().faults_injected == {"executed_server_error": 2}


def test_a_seed_reproduces_the_executed_faults_and_leaves_older_draws_alone() -> None:
    # Given a seeded mix of faults
    faults = Faults(
        server_error_share=0.2,
        executed_server_error_share=0.3,
        executed_late_share=0.3,
        random_seed=5,
    )

    def draws(config: Faults) -> list[str | None]:
        injector = FaultInjector(config)
        return [injector.execution_fault(is_write=n % 3 != 0) for n in range(60)]

    # When two injectors draw for the same requests
    first, second = draws(faults), draws(faults)

    # Then they agree, and the new kinds are drawn only for writes
    assert first == second
    assert {"executed_server_error", "executed_late", "server_error", None} == set(first)
    assert all(kind not in ("executed_server_error", "executed_late") for kind in first[::3])
    # And without the new shares, writes draw exactly as reads (the table of old) do
    old = Faults(server_error_share=0.2, drop_after_share=0.1, random_seed=5)
    writes, reads = FaultInjector(old), FaultInjector(old)
    on_writes = [writes.execution_fault(is_write=True) for _ in range(500)]
    assert on_writes == [reads.execution_fault(is_write=False) for _ in range(500)]
    assert set(Counter(on_writes)) == {"server_error", "drop_after", None}


def test_executed_shares_count_towards_the_total_share() -> None:
    with pytest.raises(ValidationError, match="more than 1"):
        Faults(executed_late_share=0.6, executed_server_error_share=0.5)


def test_the_cli_offers_the_executed_faults() -> None:
    # Given the sandbox command / When its help is asked for
    result = CliRunner().invoke(sandbox_command, ["--help"])

    # Then it documents the new fault options
    for option in (
        "--executed-server-error-share",
        "--executed-late-share",
        "--executed-late-seconds",
    ):
        assert option in result.output
