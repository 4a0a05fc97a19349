"""One sandbox: its clock, ledger, charges and events as Stripe answers for them, late
debits, idempotency store, fault injector and request counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from worker.sandbox import objects
from worker.sandbox.charges import ChargeBook, DirectCharge
from worker.sandbox.clock import IdFactory, SandboxClock
from worker.sandbox.constants import DEFAULT_API_KEY
from worker.sandbox.errors import StripeError
from worker.sandbox.events import EventLog
from worker.sandbox.faults import FaultInjector, Faults
from worker.sandbox.idempotency import IdempotencyStore
from worker.sandbox.late import LateDebits
from worker.sandbox.params import DebitParams
from worker.sandbox.seed import Seed
from worker.sandbox.state import Ledger, Payment, PaymentStatus


class Sandbox:
    def __init__(
        self, seed: Seed, *, api_key: str = DEFAULT_API_KEY, faults: Faults | None = None
    ) -> None:
        self.seed = seed
        self.api_key = api_key
        self.initial_faults = faults or Faults()
        self.ids = IdFactory()
        self.reset()

    def reset(self) -> None:
        """Back to the seed: balances, objects, events, keys, counts, clock and faults."""
        self.clock = SandboxClock()
        self.ledger = Ledger.from_seed(self.seed, self.clock, self.ids)
        self.charges = ChargeBook(self.ledger)
        self.events = EventLog(self.clock, self.ids)
        self.late = LateDebits()
        self.idempotency = IdempotencyStore(self.clock)
        self.injector = FaultInjector(self.initial_faults)
        self.requests: Counter[str] = Counter()

    def debit(
        self,
        debit: DebitParams,
        *,
        status: PaymentStatus = "succeeded",
        request_id: str | None,
        idempotency_key: str | None,
        created: int | None = None,
    ) -> Payment:
        """An account debit (or a StripeError refusing it): the money moves, the charge is
        listed, and its event names the request and key that made it."""
        payment = self.ledger.debit(
            debit.source,
            debit.amount,
            debit.currency,
            debit.description,
            debit.metadata,
            status=status,
            created=created,
        )
        self.charges.add(payment)
        self.events.charge_created(payment, request_id=request_id, idempotency_key=idempotency_key)
        return payment

    def direct_charge(self, charge: DirectCharge) -> Payment:
        """A debit made at Stripe without the worker (tests): Stripe's checks still apply."""
        debit = DebitParams(
            charge.account, charge.amount, charge.currency, charge.description, charge.metadata
        )
        return self.debit(
            debit,
            status=charge.status,
            request_id=self.ids.new("req"),
            idempotency_key=charge.idempotency_key,
            created=charge.created,
        )

    def debit_later(self, debit: DebitParams, request_id: str, idempotency_key: str | None) -> None:
        """Carry out `debit` once the `executed_late_seconds` of the faults have passed."""
        due = self.clock.now() + self.injector.faults.executed_late_seconds
        self.late.schedule(due, debit, request_id, idempotency_key)

    def run_due(self) -> None:
        """Carry out the late debits whose time has come, dated when they fell due. One that
        Stripe's checks refuse by then (say the balance fell short) does not happen."""
        for late in self.late.pop_due(self.clock.now()):
            try:
                self.debit(
                    late.debit,
                    request_id=late.request_id,
                    idempotency_key=late.idempotency_key,
                    created=int(late.due),
                )
            except StripeError:
                self.injector.injected["executed_late_refused"] += 1

    def remove_charge(self, ident: str) -> bool:
        """Make Stripe forget a charge and its events (the money it moved stays moved)."""
        if not self.charges.remove(ident):
            return False
        self.events.hide_charge(ident)
        return True

    def snapshot(self) -> dict[str, Any]:
        ledger = self.ledger
        return {
            "platform": ledger.platform.id,
            "payments": [objects.payment(p) for p in ledger.payments.values()],
            "transfers": [objects.transfer(t) for t in ledger.transfers.values()],
            "balances": {
                account.id: {"available": dict(account.available), "pending": dict(account.pending)}
                for account in ledger.accounts.values()
            },
            "totals": ledger.totals(),
            "minted": dict(ledger.minted),
            "problems": ledger.problems(),
            "requests": dict(self.requests),
            "faults_injected": dict(self.injector.injected),
            "faults": self.injector.faults.model_dump(mode="json"),
            "idempotency_keys": len(self.idempotency),
            "events": len(self.events),
            "late_debits": len(self.late),
            "bulk_charges": self.charges.bulk_count,
            "clock": {"now": self.clock.now(), "offset_seconds": self.clock.offset},
        }
