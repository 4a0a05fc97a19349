"""Currencies and amounts: minor-unit exponents and a human form of an amount.

Amounts are always integers in the currency's minor unit, as Stripe sends and expects them
(2500 usd is 25.00 USD; 1500 jpy is 1,500 JPY because the yen has no minor unit). Nothing
here uses floats or Decimal: formatting is integer division.
"""

from __future__ import annotations

import re
from typing import Final

# Stripe's zero-decimal currencies: the amount is already in major units.
ZERO_DECIMAL_CURRENCIES: Final = frozenset((
    "bif", "clp", "djf", "gnf", "jpy", "kmf", "krw", "mga",
    "pyg", "rwf", "ugx", "vnd", "vuv", "xaf", "xof", "xpf",
))  # fmt: skip
# Three-decimal currencies: 1000 minor units to the major unit.
THREE_DECIMAL_CURRENCIES: Final = frozenset({"bhd", "jod", "kwd", "omr", "tnd"})
# Every other currency has two decimals.
DEFAULT_EXPONENT: Final = 2

_CURRENCY_SHAPE: Final = re.compile(r"[A-Za-z]{3}")


def _normalised(currency: str) -> str:
    if not _CURRENCY_SHAPE.fullmatch(currency):
        raise ValueError(f"currency must be a three-letter ISO 4217 code, not {currency!r}")
    return currency.lower()


def minor_unit_exponent(currency: str) -> int:
    """0, 2 or 3 decimal digits; case-insensitive; ValueError for anything not three letters."""
    code = _normalised(currency)
    if code in ZERO_DECIMAL_CURRENCIES:
        return 0
    if code in THREE_DECIMAL_CURRENCIES:
        return 3
    return DEFAULT_EXPONENT


def format_amount(amount: int, currency: str) -> str:
    """Render minor units for people: ``2500, "usd"`` → ``"25.00 USD"``.

    Thousands are grouped with commas, the decimal separator is a point, and the upper-case
    ISO code follows, so the result never depends on a locale or a currency symbol:
    ``1500, "jpy"`` → ``"1,500 JPY"``; ``1500, "kwd"`` → ``"1.500 KWD"``;
    ``-5, "eur"`` → ``"-0.05 EUR"``.
    """
    if isinstance(amount, bool) or not isinstance(amount, int):
        raise TypeError(f"amount must be an int in minor units, not {type(amount).__name__}")
    exponent = minor_unit_exponent(currency)
    sign = "-" if amount < 0 else ""
    major, minor = divmod(abs(amount), 10**exponent)
    digits = f"{major:,}"
    if exponent:
        digits = f"{digits}.{minor:0{exponent}d}"
    return f"{sign}{digits} {currency.upper()}"
