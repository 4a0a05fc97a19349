"""What the CLI's commands share: their help layout, and the settings and ledger they open.

Imported when `debit-worker` starts, so it imports nothing heavy at module level: the worker's
modules are imported by the command that needs them, when it runs (`--help` stays fast).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

from worker.ops.cli_errors import talking_to

if TYPE_CHECKING:
    from worker.adapters.ledger import Ledger
    from worker.settings import Settings

CONTEXT: Final[dict[str, Any]] = {"help_option_names": ["-h", "--help"], "show_default": True}


def settings(**overrides: Any) -> Settings:
    """The DEBIT_WORKER_* settings, options given on the command line winning. A bad setting
    ends the command with one line naming it (cli_errors)."""
    from worker.settings import load_settings  # noqa: PLC0415 - kept out of `--help`

    found = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    talking_to(database_url=found.database_url, broker_url=found.broker_url)
    return found


def ledger(settings: Settings) -> Ledger:
    """The ledger on a small pool: one command, one connection at a time."""
    from worker.adapters.ledger import Ledger  # noqa: PLC0415
    from worker.adapters.ledger.database import make_engine  # noqa: PLC0415

    return Ledger.on(make_engine(settings.database_url, pool_size=2))
