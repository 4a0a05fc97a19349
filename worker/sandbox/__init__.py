"""A stateful local Stripe for account debits, spoken to by the unmodified SDK over HTTP.

Start one with `running_sandbox()` (tests, demo, bench) or the `sandbox` CLI command.
"""

from worker.sandbox.admin_client import BulkDayResult, SandboxAdmin, SandboxState
from worker.sandbox.faults import Faults
from worker.sandbox.runner import RunningSandbox, running_sandbox
from worker.sandbox.seed import AccountSeed, Seed, load_seed

__all__ = [
    "AccountSeed",
    "BulkDayResult",
    "Faults",
    "RunningSandbox",
    "SandboxAdmin",
    "SandboxState",
    "Seed",
    "load_seed",
    "running_sandbox",
]
