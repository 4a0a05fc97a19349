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


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
_PAIRS = tuple(high + low for high in _ALPHABET for low in _ALPHABET)  # "00" .. "zz"
_LOW_SPAN = len(_PAIRS) ** 3  # 62**6: the six base-62 digits re-encoded for every id


class IdFactory:
    """Stripe-looking ids (`py_`, `tr_`, `txn_`, `req_`): a prefix and 24 base-62 chars."""

    def __init__(self) -> None:
        self._counter = 0
        self._epoch = time.time_ns()
        self._high = -1
        self._high_digits = ""

    def new(self, prefix: str) -> str:
        # Counter-based: unique within a process, ordered, and no shared RNG to contend on.
        # Every debit mints several ids, so only the six lowest base-62 digits are encoded
        # each time; the digits above them change once in 62**6 ids and are kept.
        self._counter += 1
        high, low = divmod((self._epoch << 32) + self._counter, _LOW_SPAN)
        if high != self._high:
            self._high, self._high_digits = high, _base62(high)
        rest, third = divmod(low, len(_PAIRS))
        first, second = divmod(rest, len(_PAIRS))
        digits = self._high_digits + _PAIRS[first] + _PAIRS[second] + _PAIRS[third]
        return f"{prefix}_1{digits.rjust(23, '0')[-23:]}"


def _base62(value: int) -> str:
    """`value` in base 62, without leading zeros ("" for 0)."""
    digits = []
    while value:
        value, digit = divmod(value, len(_ALPHABET))
        digits.append(_ALPHABET[digit])
    return "".join(reversed(digits))
