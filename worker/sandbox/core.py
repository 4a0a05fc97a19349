"""One sandbox: its clock, ledger, idempotency store, fault injector and request counts."""

from __future__ import annotations

from collections import Counter
from typing import Any

from worker.sandbox import objects
from worker.sandbox.clock import IdFactory, SandboxClock
from worker.sandbox.faults import FaultInjector, Faults
from worker.sandbox.idempotency import IdempotencyStore
from worker.sandbox.seed import Seed
from worker.sandbox.state import Ledger

DEFAULT_API_KEY = "sk_test_sandbox"


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
        """Back to the seed: balances, objects, keys, counts, clock and faults."""
        self.clock = SandboxClock()
        self.ledger = Ledger.from_seed(self.seed, self.clock, self.ids)
        self.idempotency = IdempotencyStore(self.clock)
        self.injector = FaultInjector(self.initial_faults)
        self.requests: Counter[str] = Counter()

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
            "clock": {"now": self.clock.now(), "offset_seconds": self.clock.offset},
        }
