"""A stateful local Stripe for account debits, spoken to by the unmodified SDK over HTTP.

Start one with `running_sandbox()` (tests, demo, bench) or the `sandbox` CLI command.
"""

from worker.sandbox.admin_client import SandboxAdmin, SandboxState
from worker.sandbox.core import DEFAULT_API_KEY
from worker.sandbox.faults import TEST_MODE_RPS, FaultKind, Faults
from worker.sandbox.runner import RunningSandbox, running_sandbox
from worker.sandbox.seed import DEFAULT_SEED_PATH, AccountSeed, Seed, load_seed

__all__ = [
    "DEFAULT_API_KEY",
    "DEFAULT_SEED_PATH",
    "TEST_MODE_RPS",
    "AccountSeed",
    "FaultKind",
    "Faults",
    "RunningSandbox",
    "SandboxAdmin",
    "SandboxState",
    "Seed",
    "load_seed",
    "running_sandbox",
]
