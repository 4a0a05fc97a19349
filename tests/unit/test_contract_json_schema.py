"""The committed JSON Schema files are generated from the models, are valid draft 2020-12,
and agree with the models on the examples and on invalid commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel, ValidationError

from schemas import generate
from schemas.commands import DebitRequested
from schemas.events import DebitFailedEvent, DebitSucceededEvent

SCHEMAS_DIR = Path(generate.__file__).resolve().parent
EXAMPLES_DIR = SCHEMAS_DIR / "examples"

# (example file, schema file, model)
EXAMPLES: list[tuple[str, str, type[BaseModel]]] = [
    ("debit-requested.v1.json", "debit-requested.v1.json", DebitRequested),
    ("debit-requested-refund-recovery.v1.json", "debit-requested.v1.json", DebitRequested),
    ("debit-succeeded-event.v1.json", "debit-succeeded-event.v1.json", DebitSucceededEvent),
    ("debit-failed-event.v1.json", "debit-failed-event.v1.json", DebitFailedEvent),
    (
        "debit-failed-event-invalid-request.v1.json",
        "debit-failed-event.v1.json",
        DebitFailedEvent,
    ),
]


def load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


def schema(filename: str) -> dict[str, Any]:
    document: dict[str, Any] = load(generate.JSON_DIR / filename)
    return document


def test_the_committed_schema_files_match_the_models() -> None:
    # Given the models as they are now / When the generator renders them
    # Then the committed files are byte-identical (else: run `make schemas` and commit)
    assert generate.check() == []


def test_the_drift_check_names_a_file_that_differs(tmp_path: Path) -> None:
    # Given freshly generated files, one edited by hand and one stray file
    generate.write(tmp_path)
    edited = tmp_path / "debit-failed.v1.json"
    edited.write_text(edited.read_text(encoding="utf-8").replace("request_id", "requestId"))
    (tmp_path / "debit-requested.v0.json").write_text("{}\n")
    (tmp_path / "debit-succeeded.v1.json").unlink()
    # When the check runs / Then it names exactly those and the CLI exits non-zero
    expected = ["debit-failed.v1.json", "debit-requested.v0.json", "debit-succeeded.v1.json"]
    assert generate.check(tmp_path) == expected
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 1


def test_the_generator_writes_what_the_check_expects(tmp_path: Path) -> None:
    assert generate.main(["--dir", str(tmp_path)]) == 0
    assert generate.main(["--check", "--dir", str(tmp_path)]) == 0
    rendered = (tmp_path / "debit-requested.v1.json").read_text(encoding="utf-8")
    assert rendered.endswith("}\n")


@pytest.mark.parametrize("spec", generate.SCHEMA_FILES, ids=lambda spec: spec.filename)
def test_each_schema_file_is_a_valid_draft_2020_12_schema_with_a_stable_id(
    spec: generate.SchemaFile,
) -> None:
    document = schema(spec.filename)
    Draft202012Validator.check_schema(document)
    assert document["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert document["$id"] == f"https://debit-worker.dev/schemas/{spec.filename}"


@pytest.mark.parametrize(
    ("example", "schema_file", "model"),
    [pytest.param(*case, id=case[0]) for case in EXAMPLES],
)
def test_each_example_validates_against_its_schema_and_parses_with_its_model(
    example: str, schema_file: str, model: type[BaseModel]
) -> None:
    document = load(EXAMPLES_DIR / example)
    Draft202012Validator(schema(schema_file)).validate(document)
    parsed = model.model_validate_json((EXAMPLES_DIR / example).read_text(encoding="utf-8"))
    # The model reads every field of the example (none silently ignored) and writes it back.
    assert parsed.model_dump(mode="json", exclude_unset=True) == document


def test_every_example_file_is_used() -> None:
    assert {path.name for path in EXAMPLES_DIR.glob("*.json")} == {case[0] for case in EXAMPLES}


VALID_COMMAND: dict[str, Any] = load(EXAMPLES_DIR / "debit-requested.v1.json")
RECOVERY_COMMAND: dict[str, Any] = load(EXAMPLES_DIR / "debit-requested-refund-recovery.v1.json")


@pytest.mark.parametrize(
    "document",
    [
        pytest.param({**VALID_COMMAND, "amount": "100"}, id="amount-string"),
        pytest.param({**VALID_COMMAND, "amount": 1.5}, id="amount-float"),
        pytest.param({**VALID_COMMAND, "amount": True}, id="amount-bool"),
        pytest.param({**VALID_COMMAND, "amount": 0}, id="amount-zero"),
        pytest.param({**VALID_COMMAND, "currency": "USD"}, id="currency-upper-case"),
        pytest.param({**VALID_COMMAND, "account": "cus_NffrFeUfNV2Hib"}, id="account-customer"),
        pytest.param({**VALID_COMMAND, "request_id": ""}, id="request-id-empty"),
        pytest.param({**VALID_COMMAND, "surprise": 1}, id="unknown-field"),
        pytest.param(
            {key: value for key, value in VALID_COMMAND.items() if key != "reason"},
            id="reason-missing",
        ),
        pytest.param({**VALID_COMMAND, "refund": "re_3PZk9a2eZvKYlo2C"}, id="refund-not-recovery"),
        pytest.param(
            {key: value for key, value in RECOVERY_COMMAND.items() if key != "refund"},
            id="recovery-without-refund",
        ),
        pytest.param({**RECOVERY_COMMAND, "refund": "ch_3PZk9a2eZvKYlo2C"}, id="refund-charge"),
        pytest.param({**VALID_COMMAND, "metadata": {"k" * 41: "v"}}, id="metadata-key-long"),
        pytest.param({**VALID_COMMAND, "metadata": {"a[b]": "v"}}, id="metadata-key-bracket"),
        pytest.param({**VALID_COMMAND, "metadata": {"k": "v" * 501}}, id="metadata-value-long"),
        pytest.param({**VALID_COMMAND, "metadata": {"refund": "v"}}, id="metadata-reserved"),
        pytest.param(
            {**VALID_COMMAND, "metadata": {f"k{i}": "v" for i in range(48)}},
            id="metadata-too-many",
        ),
    ],
)
def test_schema_and_model_both_refuse_an_invalid_command(document: dict[str, Any]) -> None:
    # Given an invalid command / When checked by a non-Python producer's schema validator
    # and by the worker's model / Then both refuse it
    assert not Draft202012Validator(schema("debit-requested.v1.json")).is_valid(document)
    with pytest.raises(ValidationError):
        DebitRequested.model_validate_json(json.dumps(document))
