"""Test-only crash points: let the fault-injection harness kill a worker process at the
exact moments that matter (after Stripe answered, after the outcome was recorded).

Off unless ``DEBIT_WORKER_CRASH_POINTS`` is set, e.g. ``after_stripe:0.02,after_record:0.02``
(point:probability). A hit ends the process at once with ``os._exit`` (no cleanup, no ack,
like SIGKILL) and an exit status that names the point, so the harness can count them.
"""

from __future__ import annotations

import os
import random
from functools import cache
from typing import Final

ENV: Final = "DEBIT_WORKER_CRASH_POINTS"
# Exit status per point: the harness reads these back.
EXIT_CODES: Final = {"after_stripe": 81, "after_record": 82, "after_publish": 83}


@cache
def _configured() -> dict[str, float]:
    spec = os.environ.get(ENV, "").strip()
    if not spec:
        return {}
    chances: dict[str, float] = {}
    for item in spec.split(","):
        name, _, share = item.strip().partition(":")
        if name not in EXIT_CODES:
            raise ValueError(f"{ENV}: unknown crash point {name!r}; known: {sorted(EXIT_CODES)}")
        chances[name] = float(share or 1.0)
    return chances


def crash_point(name: str) -> None:
    """Maybe end the process here (only when the harness asked for it)."""
    chance = _configured().get(name)
    if chance and random.random() < chance:  # noqa: S311 - fault injection, not secrets
        os._exit(EXIT_CODES[name])
