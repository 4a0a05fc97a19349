"""The sandbox's defaults and limits that its command line shows: `debit-worker sandbox --help`
loads this module, not the server (aiohttp, pydantic)."""

from __future__ import annotations

from typing import Final

DEFAULT_API_KEY: Final = "sk_test_sandbox"
DEFAULT_PORT: Final = 12111
TEST_MODE_RPS: Final = 25.0  # Stripe's test-mode limit; live mode allows 100
ALLOW_FLAG: Final = "--allow-non-loopback"
