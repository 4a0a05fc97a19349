"""Balances always add up: per currency, the sum of all balances never changes."""

from __future__ import annotations

import hypothesis.strategies as st
import stripe
from hypothesis import HealthCheck, given, settings
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from tests.sandbox.helpers import EXPRESS_CA, EXPRESS_HK, EXPRESS_US, LOW_BALANCE_US, PLATFORM
from worker.sandbox import Faults, RunningSandbox, load_seed
from worker.sandbox.clock import IdFactory, SandboxClock
from worker.sandbox.errors import StripeError
from worker.sandbox.seed import AccountSeed
from worker.sandbox.state import Ledger

SEED = load_seed()
ACCOUNT_IDS = [account.id for account in SEED.accounts] + [PLATFORM, "acct_1Unknown0000000001"]
CURRENCIES = ["usd", "jpy", "hkd", "cad", "eur"]


class LedgerMachine(RuleBasedStateMachine):
    """Random debits and account replacements against the ledger itself."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger.from_seed(SEED, SandboxClock(), IdFactory())
        self.moved: dict[str, int] = {}

    @rule(
        source=st.sampled_from(ACCOUNT_IDS),
        amount=st.integers(min_value=1, max_value=2_000_000),
        currency=st.sampled_from(CURRENCIES),
    )
    def debit(self, source: str, amount: int, currency: str) -> None:
        before = self.ledger.totals()
        try:
            payment = self.ledger.debit(source, amount, currency, None, {})
        except StripeError:
            assert self.ledger.totals() == before
            return
        assert payment.amount == amount
        self.moved[currency] = self.moved.get(currency, 0) + amount

    @rule(account=st.sampled_from(SEED.accounts), usd=st.integers(min_value=0, max_value=10**7))
    def replace_account(self, account: AccountSeed, usd: int) -> None:
        self.ledger.put_account(account.model_copy(update={"available": {"usd": usd}}))

    @invariant()
    def books_balance(self) -> None:
        assert self.ledger.problems() == []

    @invariant()
    def the_platform_holds_exactly_what_was_debited(self) -> None:
        for currency, amount in self.moved.items():
            assert self.ledger.platform.available.get(currency, 0) == amount


TestLedgerKeepsMoneyConstant = LedgerMachine.TestCase
TestLedgerKeepsMoneyConstant.settings = settings(max_examples=60, stateful_step_count=30)

SOURCES = [EXPRESS_US, EXPRESS_CA, EXPRESS_HK, LOW_BALANCE_US]
CURRENCY_OF = {EXPRESS_US: "usd", EXPRESS_CA: "cad", EXPRESS_HK: "hkd", LOW_BALANCE_US: "usd"}


@settings(
    max_examples=12, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    debits=st.lists(
        st.tuples(st.sampled_from(SOURCES), st.integers(min_value=1, max_value=400_000)),
        min_size=1,
        max_size=8,
    ),
    fault_seed=st.integers(min_value=0, max_value=2**16),
)
def test_random_debits_under_random_faults_move_each_keys_money_exactly_once(
    sandbox_server: RunningSandbox, debits: list[tuple[str, int]], fault_seed: int
) -> None:
    # Given a sandbox that drops, fails and rate limits debits at random
    sandbox_server.admin.reset()
    sandbox_server.admin.set_faults(
        Faults(
            rate_limit_share=0.15,
            server_error_share=0.1,
            drop_before_share=0.1,
            drop_after_share=0.15,
            writes_only=True,
            random_seed=fault_seed,
        )
    )
    client = stripe.StripeClient(sandbox_server.api_key, base_addresses={"api": sandbox_server.url})
    succeeded: dict[str, int] = {}

    # When each debit is retried with its own key until it has a definite answer
    for index, (source, amount) in enumerate(debits):
        key = f"prop-{index}"
        params = {"source": source, "amount": amount, "currency": CURRENCY_OF[source]}
        for _attempt in range(30):
            try:
                payment = client.v1.charges.create(params=params, options={"idempotency_key": key})  # type: ignore[arg-type]
            except (stripe.APIConnectionError, stripe.RateLimitError):
                continue  # no stored answer: try again with the same key
            except (stripe.APIError, stripe.InvalidRequestError):
                break  # a stored 500 or a refusal: final for this key
            succeeded[payment.id] = amount
            break

    # Then every currency still adds up
    state = sandbox_server.admin.state()
    assert state.problems == []
    assert state.totals == state.minted
    # And exactly the payments the client saw succeed moved money, once each
    assert {p["id"]: p["amount"] for p in state.payments} == succeeded
    moved = sum(p["amount"] for p in state.payments)
    platform = state.balances[PLATFORM]["available"]
    assert sum(platform.values()) == moved
