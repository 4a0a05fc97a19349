"""Currency exponents and amount formatting: integer minor units in, unambiguous text out."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from worker.domain.money import (
    THREE_DECIMAL_CURRENCIES,
    ZERO_DECIMAL_CURRENCIES,
    format_amount,
    minor_unit_exponent,
)

RULES_DOC = Path(__file__).resolve().parents[2] / "docs" / "rules.md"
ZERO_DECIMAL = sorted(ZERO_DECIMAL_CURRENCIES)
THREE_DECIMAL = sorted(THREE_DECIMAL_CURRENCIES)
TWO_DECIMAL_SAMPLE = ["usd", "eur", "gbp", "cad", "aud", "chf", "nok", "huf", "pln", "sek"]


def _parse(text: str, exponent: int) -> int:
    """Read format_amount's output back into minor units (integers only)."""
    number, _, _code = text.partition(" ")
    negative = number.startswith("-")
    major, _, minor = number.lstrip("-").replace(",", "").partition(".")
    assert len(minor) == exponent
    scale: int = 10**exponent
    value = int(major) * scale + (int(minor) if minor else 0)
    return -value if negative else value


@pytest.mark.parametrize("currency", ZERO_DECIMAL, ids=ZERO_DECIMAL)
def test_zero_decimal_currencies_have_no_minor_unit(currency: str) -> None:
    # Given a zero-decimal currency, When its exponent is asked, Then it is 0
    assert minor_unit_exponent(currency) == 0


@pytest.mark.parametrize("currency", THREE_DECIMAL, ids=THREE_DECIMAL)
def test_three_decimal_currencies_have_a_thousandth_minor_unit(currency: str) -> None:
    # Given a three-decimal currency, When its exponent is asked, Then it is 3
    assert minor_unit_exponent(currency) == 3


@pytest.mark.parametrize("currency", TWO_DECIMAL_SAMPLE, ids=TWO_DECIMAL_SAMPLE)
def test_other_currencies_have_two_decimals(currency: str) -> None:
    # Given any other currency, When its exponent is asked, Then it is 2
    assert minor_unit_exponent(currency) == 2


def documented_exponents() -> dict[str, int]:
    """Currency → exponent, as docs/rules.md tells operators: "the worker treats BIF CLP …
    as zero-decimal, BHD JOD … as three-decimal"."""
    text = " ".join(RULES_DOC.read_text(encoding="utf-8").split())
    found = re.search(r"treats ([A-Z ]+) as zero-decimal, ([A-Z ]+) as three-decimal", text)
    assert found, "docs/rules.md no longer says which currencies are zero- or three-decimal"
    zero, three = (group.split() for group in found.groups())
    return {code.lower(): 0 for code in zero} | {code.lower(): 3 for code in three}


def test_the_currencies_the_rules_doc_names_are_exactly_those_with_other_exponents() -> None:
    # Given the zero- and three-decimal currencies docs/rules.md lists (Stripe's lists:
    # sixteen and five)
    documented = documented_exponents()
    assert Counter(documented.values()) == {0: 16, 3: 5}
    # When the worker is asked the exponent of those and of every currency it treats apart
    asked = set(documented) | ZERO_DECIMAL_CURRENCIES | THREE_DECIMAL_CURRENCIES
    exponents = {code: minor_unit_exponent(code) for code in asked}
    # Then it answers what the doc says, and treats no other currency apart from two decimals
    assert exponents == documented


@pytest.mark.parametrize("currency", ["JPY", "Usd", "KWD"], ids=["JPY", "Usd", "KWD"])
def test_exponent_lookup_ignores_case(currency: str) -> None:
    # Given a code in any case, When its exponent is asked, Then it matches the lower-case one
    assert minor_unit_exponent(currency) == minor_unit_exponent(currency.lower())


@pytest.mark.parametrize(
    "currency", ["", "us", "usdx", "u$d", "123"], ids=["empty", "two", "four", "symbol", "digits"]
)
def test_a_malformed_currency_is_rejected(currency: str) -> None:
    # Given something that is not three letters, When it is looked up, Then ValueError says so
    with pytest.raises(ValueError, match="three-letter ISO 4217"):
        minor_unit_exponent(currency)


@pytest.mark.parametrize(
    ("amount", "currency", "text"),
    [
        (2500, "usd", "25.00 USD"),
        (5, "eur", "0.05 EUR"),
        (0, "gbp", "0.00 GBP"),
        (-5, "eur", "-0.05 EUR"),
        (10_000_000, "usd", "100,000.00 USD"),
        (1500, "jpy", "1,500 JPY"),
        (14_000_000, "jpy", "14,000,000 JPY"),
        (1500, "kwd", "1.500 KWD"),
        (1, "bhd", "0.001 BHD"),
        (3_300_000_000, "huf", "33,000,000.00 HUF"),
        (2500, "USD", "25.00 USD"),
    ],
    ids=[
        "usd-cents",
        "eur-below-one",
        "zero",
        "negative",
        "usd-cap",
        "jpy-no-decimals",
        "jpy-cap",
        "kwd-three-decimals",
        "bhd-smallest-unit",
        "huf-large",
        "upper-case-input",
    ],
)
def test_amounts_are_formatted_with_grouping_decimals_and_the_code(
    amount: int, currency: str, text: str
) -> None:
    # Given minor units, When formatted, Then the text shows major units and the ISO code
    assert format_amount(amount, currency) == text


def test_formatting_refuses_a_float() -> None:
    # Given a float amount (a bug upstream), When formatted, Then TypeError instead of rounding
    with pytest.raises(TypeError, match="minor units"):
        format_amount(25.0, "usd")  # type: ignore[arg-type]


@given(
    amount=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(ZERO_DECIMAL),
)
def test_zero_decimal_amounts_are_shown_as_whole_units(amount: int, currency: str) -> None:
    # Given any amount in a zero-decimal currency, When formatted
    text = format_amount(amount, currency)
    # Then there is no decimal point and the digits are the amount itself
    assert "." not in text
    assert text == f"{amount:,} {currency.upper()}"


@given(
    amount=st.integers(min_value=-(10**15), max_value=10**15),
    currency=st.sampled_from(ZERO_DECIMAL + THREE_DECIMAL + TWO_DECIMAL_SAMPLE),
)
def test_formatting_round_trips_to_the_same_minor_units(amount: int, currency: str) -> None:
    # Given any amount in any currency, When formatted and read back
    exponent = minor_unit_exponent(currency)
    text = format_amount(amount, currency)
    # Then the same integer comes back, with exactly `exponent` decimals
    assert re.fullmatch(r"-?\d{1,3}(,\d{3})*(\.\d+)? [A-Z]{3}", text)
    assert _parse(text, exponent) == amount
