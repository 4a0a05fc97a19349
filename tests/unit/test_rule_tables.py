"""The rule tables: Stripe's availability tables walked row by row, caps, and operator files.

The expected tables are written out here independently of worker/domain/rule_tables.py, so a typo
in the defaults fails a test instead of being copied into it.
"""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import pytest
from pydantic import ValidationError

from worker.domain.money import minor_unit_exponent
from worker.domain.rule_tables import DEFAULT_CAPS, Availability, RuleFileError, RuleTables

EU = [
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
]  # fmt: skip
SINGLE_COUNTRY_REGIONS = ["US", "CA", "JP", "AU", "HK", "NZ", "GB"]
CORRIDORS = {
    "US": ["HK"],
    "GB": [*EU, "CH", "NO"],
    "AU": ["NZ"],
    "NZ": ["AU"],
    "CH": [*EU, "NO"],
    "NO": [*EU, "CH"],
    **{state: ["GB", "CH", "NO"] for state in EU},
}
REQUIRED_CAP_CURRENCIES = [
    "usd", "eur", "gbp", "cad", "aud", "nzd", "hkd", "jpy", "chf", "nok", "sek", "dkk",
    "pln", "czk", "huf", "ron", "bgn",
]  # fmt: skip
EXAMPLE_FILE = Path(__file__).resolve().parents[2] / "worker" / "rules.example.yaml"

DOMESTIC_PAIRS = [(country, country) for country in SINGLE_COUNTRY_REGIONS] + list(
    itertools.product(EU, EU)
)
CORRIDOR_PAIRS = [
    (platform, account) for platform, accounts in CORRIDORS.items() for account in accounts
]
REFUSED_PAIRS = [
    ("US", "CA"),  # both in the Americas, but each country is its own region
    ("CA", "US"),
    ("US", "JP"),
    ("JP", "AU"),  # Asia Pacific is not one region either
    ("AU", "JP"),
    ("HK", "JP"),
    ("NZ", "JP"),
    ("AU", "HK"),
    ("HK", "US"),  # corridors are directional: US → HK only
    ("CH", "GB"),  # CH → EU, NO only
    ("NO", "GB"),
    ("GB", "US"),
    ("US", "GB"),
    ("US", "DE"),
    ("DE", "US"),
    ("FR", "JP"),
    ("CH", "CH"),  # CH and NO are in no domestic region
    ("NO", "NO"),
    ("CH", "US"),
    ("DE", "IS"),  # Iceland: SEPA, but neither EU nor a corridor
    ("LI", "DE"),
    ("BR", "BR"),  # countries in no table at all
    ("SG", "SG"),
    ("US", "BR"),
]


def _pair_id(pair: tuple[str, str]) -> str:
    return f"{pair[0]}->{pair[1]}"


# --- availability -------------------------------------------------------------------------


def test_the_expected_tables_cover_every_eu_member_state() -> None:
    # Given the EU as written in this test, Then it has the 27 member states, once each
    assert len(set(EU)) == len(EU) == 27


@pytest.mark.parametrize("pair", DOMESTIC_PAIRS, ids=[_pair_id(p) for p in DOMESTIC_PAIRS])
def test_platform_and_account_in_the_same_region_may_debit_domestically(
    pair: tuple[str, str],
) -> None:
    # Given the default tables and two countries of one domestic region
    platform, account = pair
    # When availability is asked, Then the debit is domestic
    assert RuleTables().availability(platform, account) is Availability.DOMESTIC
    assert RuleTables().debit_allowed_between(platform, account)


@pytest.mark.parametrize("pair", CORRIDOR_PAIRS, ids=[_pair_id(p) for p in CORRIDOR_PAIRS])
def test_every_corridor_lets_the_platform_debit_cross_border(pair: tuple[str, str]) -> None:
    # Given the default tables and a platform → account pair on a corridor
    platform, account = pair
    # When availability is asked, Then the debit is cross-border
    assert RuleTables().availability(platform, account) is Availability.CROSS_BORDER
    assert RuleTables().debit_allowed_between(platform, account)


@pytest.mark.parametrize("pair", REFUSED_PAIRS, ids=[_pair_id(p) for p in REFUSED_PAIRS])
def test_pairs_outside_regions_and_corridors_cannot_debit(pair: tuple[str, str]) -> None:
    # Given the default tables and a pair in no shared region and on no corridor
    platform, account = pair
    # When availability is asked, Then there is none
    assert RuleTables().availability(platform, account) is None
    assert not RuleTables().debit_allowed_between(platform, account)


def test_the_default_corridors_expand_to_exactly_the_expected_pairs() -> None:
    # Given the default tables, When every corridor destination of every origin is listed
    tables = RuleTables()
    origins = ["US", "GB", "AU", "NZ", "CH", "NO", *EU, "CA", "JP", "HK"]
    actual = {(origin, dest) for origin in origins for dest in tables.corridor_destinations(origin)}
    # Then they are exactly the corridor pairs of Stripe's table, nothing more
    assert actual == set(CORRIDOR_PAIRS)


@pytest.mark.parametrize(
    ("country", "region"),
    [
        *((state, "EU") for state in EU),
        *((c, c) for c in SINGLE_COUNTRY_REGIONS),
        ("CH", None),
        ("NO", None),
        ("BR", None),
        ("fr", "EU"),
    ],
    ids=[*EU, *SINGLE_COUNTRY_REGIONS, "CH", "NO", "BR", "lower-case-fr"],
)
def test_each_country_belongs_to_its_domestic_region(country: str, region: str | None) -> None:
    # Given the default tables, When a country's region is asked, Then it is the expected one
    assert RuleTables().region_of(country) == region


def test_a_group_expands_on_both_sides_of_a_corridor() -> None:
    # Given tables with a custom group used as a corridor origin and destination
    tables = RuleTables(
        groups={"EU": tuple(EU), "NORDICS": ("SE", "DK", "FI")},
        corridors={"NORDICS": ("GB",), "US": ("NORDICS",)},
    )
    # When availability is asked, Then every member is covered and direction still matters
    assert tables.debit_allowed_between("SE", "GB")
    assert tables.debit_allowed_between("US", "FI")
    assert not tables.debit_allowed_between("GB", "SE")
    assert not tables.debit_allowed_between("US", "NO")


# --- caps ---------------------------------------------------------------------------------


@pytest.mark.parametrize("currency", REQUIRED_CAP_CURRENCIES, ids=REQUIRED_CAP_CURRENCIES)
def test_each_required_currency_has_a_positive_default_cap(currency: str) -> None:
    # Given the default tables, When a required currency's cap is asked, Then it is positive
    cap = RuleTables().cap_for(currency)
    assert cap is not None
    assert cap > 0


# The reviewed rates (units per USD, the strong end of each currency's range) that the
# default caps were derived from; kept in step with the comments in worker/domain/rule_tables.py.
REVIEWED_RATES = {
    "usd": "1", "eur": "0.84", "gbp": "0.73", "cad": "1.35", "aud": "1.45", "nzd": "1.60",
    "hkd": "7.75", "jpy": "140", "chf": "0.78", "nok": "9.50", "sek": "9.00", "dkk": "6.20",
    "pln": "3.55", "czk": "20.0", "huf": "325", "ron": "4.25", "bgn": "1.60",
}  # fmt: skip


@pytest.mark.parametrize("currency", sorted(REVIEWED_RATES), ids=sorted(REVIEWED_RATES))
def test_each_default_cap_is_at_most_100000_usd_at_its_reviewed_rate(currency: str) -> None:
    # Given a default cap and the rate it was derived from
    cap_in_major_units = Fraction(DEFAULT_CAPS[currency], 10 ** minor_unit_exponent(currency))
    # When converted back to USD, Then it does not exceed 100,000 USD (rounded down, not up)
    assert cap_in_major_units / Fraction(REVIEWED_RATES[currency]) <= 100_000


def test_every_default_cap_has_a_reviewed_rate() -> None:
    # Given the default caps, Then each one is covered by the rate check above
    assert set(DEFAULT_CAPS) == set(REVIEWED_RATES)


def test_the_usd_cap_is_stripes_100000_dollars_and_lookup_ignores_case() -> None:
    # Given the default tables, Then USD is capped at exactly 100,000.00 whatever the case
    assert RuleTables().cap_for("usd") == RuleTables().cap_for("USD") == 10_000_000


def test_a_currency_without_a_cap_has_none_rather_than_a_guess() -> None:
    # Given the default tables, When a currency nobody configured is asked, Then no cap
    assert RuleTables().cap_for("brl") is None


def test_tables_are_read_only() -> None:
    # Given tables, When a section is reassigned, Then pydantic refuses
    tables = RuleTables()
    with pytest.raises(ValidationError):
        tables.caps = {}  # type: ignore[misc]


# --- loading the operator's file ----------------------------------------------------------


def test_the_example_file_equals_the_defaults() -> None:
    # Given worker/rules.example.yaml, When loaded, Then it is exactly the built-in tables
    assert RuleTables.from_file(EXAMPLE_FILE) == RuleTables()


def test_a_json_file_overrides_only_the_sections_it_gives(tmp_path: Path) -> None:
    # Given a JSON file that widens the US corridors and nothing else
    path = tmp_path / "rules.json"
    path.write_text(json.dumps({"corridors": {"US": ["HK", "CA"]}}))
    # When loaded
    tables = RuleTables.from_file(path)
    # Then the US → CA corridor exists, other corridors are gone, and caps keep their defaults
    assert tables.debit_allowed_between("US", "CA")
    assert not tables.debit_allowed_between("GB", "CH")
    assert tables.caps == RuleTables().caps


def test_an_unquoted_no_in_yaml_stays_norway(tmp_path: Path) -> None:
    # Given YAML with Norway written bare, which YAML 1.1 reads as false
    path = tmp_path / "rules.yml"
    path.write_text("corridors:\n  NO: [EU]\n  GB: [NO, CH]\n")
    # When loaded, Then NO is the country code on both sides of a corridor
    tables = RuleTables.from_file(path)
    assert tables.debit_allowed_between("NO", "FR")
    assert tables.debit_allowed_between("GB", "NO")


INVALID_FILES = [
    ("caps:\n  USD: 100\n", "caps.USD (as a key): 'USD' is not a currency"),
    ("caps:\n  usd: 0\n", "caps.usd: a cap must be positive, not 0"),
    ("caps:\n  usd: -5\n", "caps.usd: a cap must be positive"),
    ("caps:\n  usd: 100.5\n", "caps.usd: a cap must be a whole number of minor units"),
    ("caps:\n  usd: '100'\n", "caps.usd: a cap must be a whole number"),
    ("caps:\n  usd: true\n", "caps.usd: a cap must be a whole number"),
    ("domestic_regions: [us]\n", "domestic_regions[0]: 'us' is neither a country code"),
    ("domestic_regions: [USA]\n", "'USA' is used as a place but is neither"),
    ("domestic_regions: [EU, FR]\n", "FR is in two domestic regions (EU and FR)"),
    ("domestic_regions: [US, US]\n", "domestic_regions lists US twice"),
    ("groups:\n  EU: [de]\n", "groups.EU[0]: 'de' is not a country code"),
    ("groups:\n  EU: []\n", "groups.EU is empty"),
    ("groups:\n  eu: [DE]\n", "groups.eu (as a key): 'eu' is not a group name"),
    (
        "groups:\n  EU: [DE]\n  WIDE: [EU, CH]\n",
        "groups.WIDE lists the group EU; groups cannot nest",
    ),
    ("corridors:\n  US: [HK, HK]\n", "corridors.US lists HK twice"),
    ("corridors:\n  US: HK\n", "corridors.US: Input should be a valid tuple (got 'HK')"),
    ("colours: [red]\n", "colours: unknown section"),
    ("- US\n- CA\n", "expected a mapping"),
    ("", "expected a mapping"),
    ("caps: [\n", "not valid YAML"),
]


@pytest.mark.parametrize(
    ("content", "expected"),
    INVALID_FILES,
    ids=[
        "upper-case-currency",
        "zero-cap",
        "negative-cap",
        "fractional-cap",
        "string-cap",
        "boolean-cap",
        "lower-case-country",
        "three-letter-place",
        "country-in-two-regions",
        "duplicate-region",
        "lower-case-group-member",
        "empty-group",
        "lower-case-group-name",
        "nested-group",
        "duplicate-destination",
        "destination-not-a-list",
        "unknown-section",
        "list-at-top",
        "empty-file",
        "broken-yaml",
    ],
)
def test_an_invalid_rules_file_is_rejected_with_a_useful_message(
    tmp_path: Path, content: str, expected: str
) -> None:
    # Given a rules file with one mistake
    path = tmp_path / "rules.yaml"
    path.write_text(content)
    # When it is loaded, Then RuleFileError names the file and explains the mistake
    with pytest.raises(RuleFileError) as raised:
        RuleTables.from_file(path)
    assert str(path) in str(raised.value)
    assert expected in str(raised.value)


def test_every_problem_in_a_file_is_reported_at_once(tmp_path: Path) -> None:
    # Given a file with two bad caps
    path = tmp_path / "rules.yaml"
    path.write_text("caps:\n  usd: 0\n  EUR: 5\n")
    # When loaded, Then both are listed
    with pytest.raises(RuleFileError) as raised:
        RuleTables.from_file(path)
    assert "caps.usd" in str(raised.value)
    assert "caps.EUR" in str(raised.value)


def test_a_json_boolean_where_a_country_belongs_is_explained(tmp_path: Path) -> None:
    # Given JSON with a boolean in the domestic regions
    path = tmp_path / "rules.json"
    path.write_text('{"domestic_regions": [false]}')
    # When loaded, Then the message says a string was expected, not a boolean
    with pytest.raises(RuleFileError, match="must be a string such as 'FR', not the boolean"):
        RuleTables.from_file(path)


def test_invalid_json_is_rejected(tmp_path: Path) -> None:
    # Given a .json file that is not JSON, When loaded, Then the parser's complaint is shown
    path = tmp_path / "rules.json"
    path.write_text("{caps: 1}")
    with pytest.raises(RuleFileError, match="not valid JSON"):
        RuleTables.from_file(path)


def test_a_missing_file_is_rejected(tmp_path: Path) -> None:
    # Given a path where no file exists, When loaded, Then the error says it cannot be read
    with pytest.raises(RuleFileError, match="cannot read the rules file"):
        RuleTables.from_file(tmp_path / "absent.yaml")


def test_a_file_of_another_format_is_rejected(tmp_path: Path) -> None:
    # Given a .toml file, When loaded, Then the error names the accepted suffixes
    path = tmp_path / "rules.toml"
    path.write_text("[caps]\nusd = 1\n")
    with pytest.raises(RuleFileError, match=r"\.yaml, \.yml or \.json"):
        RuleTables.from_file(path)
