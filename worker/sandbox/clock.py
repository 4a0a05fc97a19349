"""The sandbox's wall clock: real time plus an offset tests can push forward."""

from __future__ import annotations

import time


class SandboxClock:
    def __init__(self) -> None:
        self._offset = 0.0

    def now(self) -> float:
        return time.time() + self._offset

    def advance(self, seconds: float) -> float:
        if seconds < 0:
            raise ValueError("the sandbox clock only moves forward")
        self._offset += seconds
        return self.now()

    @property
    def offset(self) -> float:
        return self._offset


class IdFactory:
    """Stripe-looking ids (`py_`, `tr_`, `txn_`, `req_`): a prefix and 24 base-62 chars."""

    _ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"

    def __init__(self) -> None:
        self._counter = 0
        self._epoch = time.time_ns()

    def new(self, prefix: str) -> str:
        # Counter-based: unique within a process, ordered, and no shared RNG to contend on.
        self._counter += 1
        value = (self._epoch << 32) + self._counter
        chars = []
        while value:
            value, digit = divmod(value, 62)
            chars.append(self._ALPHABET[digit])
        return f"{prefix}_1{''.join(reversed(chars)).rjust(23, '0')[-23:]}"
