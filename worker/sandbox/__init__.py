"""A stateful local Stripe for account debits, spoken to by the unmodified SDK over HTTP.

Start one with `running_sandbox()` (tests, demo, bench) or the `sandbox` CLI command.

The names below load their module on first use: `debit-worker sandbox --help` imports this
package without the server (aiohttp) or the models (pydantic).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Final

if TYPE_CHECKING:
    from worker.sandbox.admin_client import BulkDayResult, SandboxAdmin, SandboxState
    from worker.sandbox.faults import Faults
    from worker.sandbox.runner import RunningSandbox, running_sandbox
    from worker.sandbox.seed import AccountSeed, Seed, load_seed

_MODULE_OF: Final = {
    "AccountSeed": "worker.sandbox.seed",
    "BulkDayResult": "worker.sandbox.admin_client",
    "Faults": "worker.sandbox.faults",
    "RunningSandbox": "worker.sandbox.runner",
    "SandboxAdmin": "worker.sandbox.admin_client",
    "SandboxState": "worker.sandbox.admin_client",
    "Seed": "worker.sandbox.seed",
    "load_seed": "worker.sandbox.seed",
    "running_sandbox": "worker.sandbox.runner",
}

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


def __getattr__(name: str) -> object:
    module = _MODULE_OF.get(name)
    if module is None:  # a submodule (`from worker.sandbox import errors`) is imported then
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # loaded once
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
