"""The rule tables the decision (decision.py) reads: regions, corridors and per-debit caps.

Stripe lets a platform debit a connected account only when both are in the same region or
in a supported cross-border corridor, and never for more than 100,000 USD (or the
equivalent). Stripe can widen the corridors for one platform, and exchange rates move, so
these are data: `RuleTables()` holds Stripe's published values and `RuleTables.from_file`
loads an operator's override (worker/rules.example.yaml, docs/rules.md).

A *term* is a country code ("US") or the name of a group under `groups` ("EU"); domestic
regions and both sides of a corridor are terms.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any, Final, Self

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import ErrorDetails

_COUNTRY: Final = re.compile(r"[A-Z]{2}")
_GROUP: Final = re.compile(r"[A-Z][A-Z0-9_]{1,31}")
_CURRENCY: Final = re.compile(r"[a-z]{3}")


# Pydantic turns only ValueError (not TypeError) raised by a validator into a validation error,
# hence the TRY004 exemptions below.


def _shaped(pattern: re.Pattern[str], what: str, example: str, refusal: str) -> BeforeValidator:
    """A string that `pattern` matches; any other is refused with "<its repr> <refusal>"."""

    def check(value: object) -> str:
        if isinstance(value, bool):
            # JSON true/false, or YAML read by a tool that treats NO/ON/YES as booleans.
            raise ValueError(  # noqa: TRY004
                f"{what} must be a string such as {example!r}, not the boolean {value}"
            )
        if not isinstance(value, str):
            raise ValueError(f"{what} must be a string such as {example!r}, not {value!r}")  # noqa: TRY004
        if not pattern.fullmatch(value):
            raise ValueError(f"{value!r} {refusal}")
        return value

    return BeforeValidator(check)


_NOT_COUNTRY: Final = (
    "is not a country code: expected two upper-case letters (ISO 3166-1 alpha-2), such as 'FR'"
)
_NOT_TERM: Final = (
    "is neither a country code (two upper-case letters, such as 'FR') nor a group name "
    "(upper-case letters, digits and '_', such as 'EU')"
)
_NOT_GROUP: Final = (
    "is not a group name: expected 2-32 upper-case letters, digits or '_', starting with a "
    "letter, such as 'EU'"
)
_NOT_CURRENCY: Final = "is not a currency: expected a lower-case ISO 4217 code, such as 'usd'"


def _cap(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(  # noqa: TRY004
            f"a cap must be a whole number of minor units (e.g. 10000000 for 100,000.00 USD), "
            f"not {value!r}"
        )
    if value <= 0:
        raise ValueError(f"a cap must be positive, not {value}")
    return value


CountryCode = Annotated[str, _shaped(_COUNTRY, "a country code", "FR", _NOT_COUNTRY)]
Term = Annotated[str, _shaped(_GROUP, "a country code or group name", "FR", _NOT_TERM)]
GroupName = Annotated[str, _shaped(_GROUP, "a group name", "EU", _NOT_GROUP)]
CurrencyCode = Annotated[str, _shaped(_CURRENCY, "a currency", "usd", _NOT_CURRENCY)]
Cap = Annotated[int, BeforeValidator(_cap)]


# The 27 member states of the European Union.
EU_MEMBER_STATES: Final = (
    "AT", "BE", "BG", "HR", "CY", "CZ", "DK", "EE", "FI", "FR", "DE", "GR", "HU", "IE",
    "IT", "LV", "LT", "LU", "MT", "NL", "PL", "PT", "RO", "SK", "SI", "ES", "SE",
)  # fmt: skip
DEFAULT_GROUPS: Final[Mapping[str, tuple[str, ...]]] = {"EU": EU_MEMBER_STATES}

# Domestic availability: platform and account both in the same one of these.
DEFAULT_DOMESTIC_REGIONS: Final = ("US", "CA", "JP", "AU", "HK", "NZ", "EU", "GB")

# Cross-border availability, platform → the places its accounts may be in. Directional:
# US → HK does not allow HK → US.
DEFAULT_CORRIDORS: Final[Mapping[str, tuple[str, ...]]] = {
    "US": ("HK",),
    "GB": ("EU", "CH", "NO"),
    "EU": ("GB", "CH", "NO"),
    "AU": ("NZ",),
    "NZ": ("AU",),
    "CH": ("EU", "NO"),
    "NO": ("EU", "CH"),
}

# Per-debit caps in minor units, each at most about 100,000 USD.
#
# REVIEWED RATES, dated 2026-11. Each cap is 100,000 USD converted at the rate on its right
# (units of the currency per USD), taken at the strong end of the currency's recent range,
# then rounded DOWN to a round figure: if the currency strengthens a little, the cap still
# stays at or under 100,000 USD. These are not live rates. The operator must review them
# against a current source (at least quarterly, and after any large move) and override them
# in the rules file (DEBIT_WORKER_RULES_FILE, docs/rules.md). A currency missing here is
# refused, never converted on the fly.
DEFAULT_CAPS: Final[Mapping[str, int]] = {
    "usd": 10_000_000,  # 100,000.00 USD: Stripe's own limit
    "eur": 8_400_000,  # 84,000.00 EUR at 0.84
    "gbp": 7_300_000,  # 73,000.00 GBP at 0.73
    "cad": 13_500_000,  # 135,000.00 CAD at 1.35
    "aud": 14_500_000,  # 145,000.00 AUD at 1.45
    "nzd": 16_000_000,  # 160,000.00 NZD at 1.60
    "hkd": 77_500_000,  # 775,000.00 HKD at 7.75 (the strong edge of the USD peg band)
    "jpy": 14_000_000,  # 14,000,000 JPY (zero-decimal) at 140
    "chf": 7_800_000,  # 78,000.00 CHF at 0.78
    "nok": 95_000_000,  # 950,000.00 NOK at 9.50
    "sek": 90_000_000,  # 900,000.00 SEK at 9.00
    "dkk": 62_000_000,  # 620,000.00 DKK at 6.20 (pegged to EUR)
    "pln": 35_500_000,  # 355,000.00 PLN at 3.55
    "czk": 20_000_000,  # 200,000.00 CZK at 20.0
    "huf": 3_250_000_000,  # 32,500,000.00 HUF at 325 (two-decimal on Stripe's API)
    "ron": 42_500_000,  # 425,000.00 RON at 4.25
    "bgn": 16_000_000,  # 160,000.00 BGN at 1.60 (pegged to EUR; Bulgaria is adopting the euro)
}


class Availability(StrEnum):
    """Why a platform may debit an account in a given country."""

    DOMESTIC = "domestic"
    CROSS_BORDER = "cross_border"


class RuleFileError(ValueError):
    """The operator's rules file cannot be read or does not describe valid tables."""


class RuleTables(BaseModel):
    """Regions, corridors and caps. Treat an instance as read-only; build a new one to change it.

    `RuleTables()` holds Stripe's published availability and the reviewed caps above.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    groups: dict[GroupName, tuple[CountryCode, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_GROUPS),
        description="Named groups of countries, usable wherever a country code is.",
    )
    domestic_regions: tuple[Term, ...] = Field(
        default=DEFAULT_DOMESTIC_REGIONS,
        description="Platform and account in the same one of these: a domestic debit.",
    )
    corridors: dict[Term, tuple[Term, ...]] = Field(
        default_factory=lambda: dict(DEFAULT_CORRIDORS),
        description="Platform location → account locations allowed cross-border.",
    )
    caps: dict[CurrencyCode, Cap] = Field(
        default_factory=lambda: dict(DEFAULT_CAPS),
        description="Largest single debit per currency, in minor units.",
    )

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        for name, countries in self.groups.items():
            if not countries:
                raise ValueError(f"groups.{name} is empty")
            _reject_duplicates(countries, f"groups.{name}")
            nested = [country for country in countries if country in self.groups]
            if nested:
                raise ValueError(f"groups.{name} lists the group {nested[0]}; groups cannot nest")
        _reject_duplicates(self.domestic_regions, "domestic_regions")
        for platform, accounts in self.corridors.items():
            _reject_duplicates(accounts, f"corridors.{platform}")
        terms = [*self.domestic_regions, *self.corridors]
        terms += [term for accounts in self.corridors.values() for term in accounts]
        for term in terms:
            if term not in self.groups and not _COUNTRY.fullmatch(term):
                raise ValueError(
                    f"{term!r} is used as a place but is neither a two-letter country code nor "
                    "a group defined under groups"
                )
        seen: dict[str, str] = {}
        for region in self.domestic_regions:
            for country in self.members(region):
                if country in seen:
                    raise ValueError(
                        f"{country} is in two domestic regions ({seen[country]} and {region}); "
                        "a country may belong to one region only"
                    )
                seen[country] = region
        return self

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> RuleTables:
        """Load the operator's tables from a .yaml/.yml or .json file.

        Each top-level section given replaces that whole section of the defaults; a section
        left out keeps its default. Raises RuleFileError with every problem found.
        """
        file = Path(path)
        if file.suffix.lower() not in {".yaml", ".yml", ".json"}:
            raise RuleFileError(f"{file}: a rules file must end in .yaml, .yml or .json")
        try:
            text = file.read_text(encoding="utf-8")
        except OSError as error:
            raise RuleFileError(f"{file}: cannot read the rules file: {error.strerror}") from None
        try:
            data: object = (
                json.loads(text)
                if file.suffix.lower() == ".json"
                else yaml.load(text, Loader=_RulesLoader)  # noqa: S506  # nosec B506 - a SafeLoader subclass
            )
        except (json.JSONDecodeError, yaml.YAMLError) as error:
            raise RuleFileError(f"{file}: not valid {file.suffix[1:].upper()}: {error}") from None
        if not isinstance(data, Mapping):
            raise RuleFileError(
                f"{file}: expected a mapping with the keys groups, domestic_regions, "
                f"corridors and caps, not {type(data).__name__}"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as error:
            problems = "\n".join(f"  - {_describe(detail)}" for detail in error.errors())
            raise RuleFileError(f"{file} is invalid:\n{problems}") from None

    def members(self, term: str) -> frozenset[str]:
        """The countries a term stands for: a group's members, or the country itself."""
        return frozenset(self.groups.get(term, (term,)))

    def region_of(self, country: str) -> str | None:
        """The domestic region the country belongs to ("EU" for "FR"), or None (e.g. "CH")."""
        country = country.upper()
        for region in self.domestic_regions:
            if country in self.members(region):
                return region
        return None

    def corridor_destinations(self, platform_country: str) -> frozenset[str]:
        """Every country a platform in `platform_country` may debit cross-border."""
        platform_country = platform_country.upper()
        destinations: set[str] = set()
        for origin, accounts in self.corridors.items():
            if platform_country in self.members(origin):
                for term in accounts:
                    destinations |= self.members(term)
        return frozenset(destinations)

    def availability(self, platform_country: str, account_country: str) -> Availability | None:
        """Domestic, cross-border, or None when debits between the two are not supported."""
        region = self.region_of(platform_country)
        if region is not None and region == self.region_of(account_country):
            return Availability.DOMESTIC
        if account_country.upper() in self.corridor_destinations(platform_country):
            return Availability.CROSS_BORDER
        return None

    def debit_allowed_between(self, platform_country: str, account_country: str) -> bool:
        """Whether a platform in one country may debit an account in the other (directional)."""
        return self.availability(platform_country, account_country) is not None

    def cap_for(self, currency: str) -> int | None:
        """The largest single debit in minor units, or None when the currency has no cap."""
        return self.caps.get(currency.lower())


def _reject_duplicates(items: tuple[str, ...], where: str) -> None:
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ValueError(f"{where} lists {item} twice")
        seen.add(item)


def _describe(detail: ErrorDetails) -> str:
    where = ""
    for part in detail["loc"]:
        if isinstance(part, int):
            where += f"[{part}]"
        elif part == "[key]":
            where += " (as a key)"
        else:
            where += f".{part}" if where else str(part)
    message = detail["msg"].removeprefix("Value error, ")
    if detail["type"] == "extra_forbidden":
        message = "unknown section; expected groups, domestic_regions, corridors or caps"
    elif detail["type"] not in {"value_error", "assertion_error"}:
        message = f"{message} (got {_short(detail['input'])})"
    return f"{where}: {message}" if where else message


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _RulesLoader(yaml.SafeLoader):
    """A SafeLoader where only true/false are booleans, as in YAML 1.2.

    PyYAML follows YAML 1.1, which reads an unquoted NO (Norway) as false; in a file made of
    country codes that is a trap, so yes/no/on/off stay strings here.
    """


_BOOL_TAG: Final = "tag:yaml.org,2002:bool"
_RulesLoader.yaml_implicit_resolvers = {
    first: [(tag, pattern) for tag, pattern in resolvers if tag != _BOOL_TAG]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_RulesLoader.add_implicit_resolver(
    _BOOL_TAG, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
