"""The sandbox's money: balances per account and currency, the payments and transfers that
moved it, and the refunded charges and refunds it was seeded with.

Every change keeps, per currency, the sum of all balances equal to what the seed (and the
admin endpoint) put in: `Ledger.problems()` says so, or says what broke.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Literal

from worker.sandbox import errors, rules
from worker.sandbox.clock import IdFactory, SandboxClock
from worker.sandbox.seed import AccountSeed, ChargeSeed, RefundSeed, Seed

# succeeded: the money moved to the platform's available balance; pending: it left the
# account and waits in the platform's pending balance; failed: nothing moved.
PaymentStatus = Literal["succeeded", "pending", "failed"]


@dataclass
class Account:
    seed: AccountSeed
    available: dict[str, int]
    pending: dict[str, int]

    @classmethod
    def from_seed(cls, seed: AccountSeed) -> Account:
        return cls(seed, dict(seed.available), dict(seed.pending))

    @property
    def id(self) -> str:
        return self.seed.id


@dataclass(frozen=True)
class Payment:
    """The `py_` object on the platform that an account debit returns."""

    id: str
    amount: int
    currency: str
    source_account: str
    transfer_id: str | None  # None when the payment failed
    balance_transaction: str | None
    description: str | None
    metadata: dict[str, str]
    created: int
    status: PaymentStatus = "succeeded"


@dataclass(frozen=True)
class Transfer:
    """The `tr_` object on the connected account: the money leaving it."""

    id: str
    amount: int
    currency: str
    account: str
    destination: str
    destination_payment: str
    balance_transaction: str
    description: str | None
    metadata: dict[str, str]
    created: int


@dataclass
class Ledger:
    clock: SandboxClock
    ids: IdFactory
    platform: Account
    accounts: dict[str, Account] = field(default_factory=dict)
    payments: dict[str, Payment] = field(default_factory=dict)
    transfers: dict[str, Transfer] = field(default_factory=dict)
    charges: dict[str, ChargeSeed] = field(default_factory=dict)
    refunds: dict[str, RefundSeed] = field(default_factory=dict)
    minted: Counter[str] = field(default_factory=Counter)

    @classmethod
    def from_seed(cls, seed: Seed, clock: SandboxClock, ids: IdFactory) -> Ledger:
        ledger = cls(clock, ids, Account.from_seed(seed.platform))
        ledger.accounts[seed.platform.id] = ledger.platform
        ledger._mint(ledger.platform, sign=1)
        for account_seed in seed.accounts:
            ledger.put_account(account_seed)
        ledger.charges = {charge.id: charge for charge in seed.charges}
        ledger.refunds = {refund.id: refund for refund in seed.refunds}
        return ledger

    def account(self, account_id: str) -> Account | None:
        return self.accounts.get(account_id)

    def put_account(self, seed: AccountSeed) -> Account:
        """Add or replace an account; its balances are new money (counted in `minted`)."""
        old = self.accounts.get(seed.id)
        if old is not None:
            self._mint(old, sign=-1)
        account = Account.from_seed(seed)
        self.accounts[seed.id] = account
        self._mint(account, sign=1)
        if seed.id == self.platform.id:
            self.platform = account
        return account

    def debit(
        self,
        source: str,
        amount: int,
        currency: str,
        description: str | None,
        metadata: dict[str, str],
        *,
        status: PaymentStatus = "succeeded",
        created: int | None = None,
    ) -> Payment:
        """Move `amount` from `source`'s available balance to the platform's (its pending
        balance while the payment is `pending`; nowhere if it `failed`), or refuse.
        `created`: when it happened (epoch seconds), if not now."""
        account = self.accounts.get(source)
        if account is None or account is self.platform:
            raise errors.resource_missing("source", source, param="source", status=400)
        rules.check_debit(
            self.platform.seed, account.seed, account.available.get(currency, 0), amount, currency
        )
        now = int(self.clock.now()) if created is None else created
        payment_id = self.ids.new("py")
        transfer_id = balance_transaction = None
        if status != "failed":
            transfer_id = self._move(
                account,
                amount,
                currency,
                payment_id=payment_id,
                description=description,
                now=now,
                pending=status == "pending",
            )
            balance_transaction = self.ids.new("txn")
        payment = Payment(
            payment_id,
            amount,
            currency,
            account.id,
            transfer_id,
            balance_transaction,
            description,
            dict(metadata),
            now,
            status,
        )
        self.payments[payment_id] = payment
        return payment

    def _move(
        self,
        account: Account,
        amount: int,
        currency: str,
        *,
        payment_id: str,
        description: str | None,
        now: int,
        pending: bool,
    ) -> str:
        """The transfer taking `amount` out of the account for payment `payment_id`."""
        transfer_id = self.ids.new("tr")
        account.available[currency] = account.available.get(currency, 0) - amount
        received = self.platform.pending if pending else self.platform.available
        received[currency] = received.get(currency, 0) + amount
        self.transfers[transfer_id] = Transfer(
            transfer_id,
            amount,
            currency,
            account.id,
            self.platform.id,
            payment_id,
            self.ids.new("txn"),
            description,
            {},
            now,
        )
        return transfer_id

    def totals(self) -> dict[str, int]:
        sums: Counter[str] = Counter()
        for account in self.accounts.values():
            sums.update(account.available)
            sums.update(account.pending)
        return {currency: sums[currency] for currency in sorted(sums)}

    def problems(self) -> list[str]:
        """Broken money invariants, in words; empty when the books balance."""
        found = []
        totals = self.totals()
        for currency in sorted(set(totals) | set(self.minted)):
            if totals.get(currency, 0) != self.minted.get(currency, 0):
                found.append(
                    f"{currency}: balances add up to {totals.get(currency, 0)}, "
                    f"but {self.minted.get(currency, 0)} was put in"
                )
        for account in self.accounts.values():
            for currency, amount in account.available.items():
                if amount < 0:
                    found.append(f"{account.id} available {currency} is negative: {amount}")
        moved: Counter[str] = Counter()
        for payment in self.payments.values():
            if payment.status != "failed":
                moved[payment.currency] += payment.amount
        for currency, amount in moved.items():
            transferred = sum(t.amount for t in self.transfers.values() if t.currency == currency)
            if transferred != amount:
                found.append(f"{currency}: payments {amount} != transfers {transferred}")
        return found

    def _mint(self, account: Account, *, sign: int) -> None:
        for balances in (account.available, account.pending):
            for currency, amount in balances.items():
                self.minted[currency] += sign * amount
