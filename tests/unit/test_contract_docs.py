"""docs/contract.md, the producers' and consumers' manual, keeps up with the models."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from schemas import topology
from schemas.codes import CATALOGUE, FailureCode
from schemas.commands import DebitRequested
from schemas.events import FAILED_DATASCHEMA, FAILED_TYPE, SUCCEEDED_DATASCHEMA, SUCCEEDED_TYPE

CONTRACT = (Path(__file__).resolve().parents[2] / "docs" / "contract.md").read_text(
    encoding="utf-8"
)


def table_rows(first_cell: str) -> list[list[str]]:
    """The cells of every Markdown table row whose first cell is `first_cell` (backticked)."""
    rows = []
    for line in CONTRACT.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and cells[0] == f"`{first_cell}`":
            rows.append(cells)
    return rows


def plain(text: str) -> str:
    """Text without Markdown code marks or quotes, for comparing prose."""
    return re.sub(r"[`'\"]", "", text)


@pytest.mark.parametrize("code", list(FailureCode), ids=str)
def test_every_failure_code_is_documented_as_in_the_catalogue(code: FailureCode) -> None:
    # Given a failure code / When the manual's code table is read
    rows = table_rows(code.value)
    # Then it has exactly one row, saying what the catalogue says
    assert len(rows) == 1, f"{code} missing from the code table in docs/contract.md"
    _, meaning, action, retry = rows[0]
    info = CATALOGUE[code]
    assert plain(meaning) == plain(info.meaning)
    assert plain(action) == plain(info.producer_action)
    assert retry == ("yes" if info.retry_may_succeed else "no")


@pytest.mark.parametrize("field", list(DebitRequested.model_fields))
def test_every_command_field_is_in_the_fields_table(field: str) -> None:
    assert len(table_rows(field)) == 1, f"{field} missing from the fields table"


def test_the_fields_table_documents_no_field_the_model_lacks() -> None:
    start = CONTRACT.index("| field | required |")
    table = CONTRACT[start:].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([a-z_]+)` \|", table, flags=re.MULTILINE))
    assert documented == set(DebitRequested.model_fields)


@pytest.mark.parametrize(
    "name",
    [value for key, value in vars(topology).items() if key.isupper() and isinstance(value, str)]
    + [SUCCEEDED_TYPE, FAILED_TYPE, SUCCEEDED_DATASCHEMA, FAILED_DATASCHEMA],
)
def test_the_manual_uses_the_contract_names(name: str) -> None:
    # Given a name from topology.py or the event types / Then the manual spells it exactly so
    assert name in CONTRACT
