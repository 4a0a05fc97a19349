"""Check bodies and parameters against Stripe's OpenAPI description (API 2023-08-16).

Bodies: every property the schema knows must have the schema's type, required properties
must be present, and anything newer (e.g. `account.controller.losses`) is allowed on top.
Parameters: a request may only send names the operation declares.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator

SPEC_PATH = Path(__file__).with_name("stripe_openapi_2023-08-16.json")


@functools.cache
def _spec(path: Path = SPEC_PATH) -> dict[str, Any]:
    spec: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    return spec


@functools.cache
def _validator(schema_name: str, path: Path = SPEC_PATH) -> Draft202012Validator:
    components = _to_json_schema(_spec(path)["components"])
    root = {"$ref": f"#/components/schemas/{schema_name}", "components": components}
    return Draft202012Validator(root)


def _to_json_schema(node: Any) -> Any:
    """OpenAPI 3.0 → JSON Schema: `nullable` becomes a null alternative; extras allowed."""
    if isinstance(node, list):
        return [_to_json_schema(item) for item in node]
    if not isinstance(node, dict):
        return node
    converted = {
        key: _to_json_schema(value)
        for key, value in node.items()
        if key != "nullable" and not (key == "additionalProperties" and value is False)
    }
    if node.get("nullable") is True:
        return {"anyOf": [converted, {"type": "null"}]}
    return converted


def body_problems(schema_name: str, body: Any, spec: Path = SPEC_PATH) -> list[str]:
    """Where `body` disagrees with `components.schemas[schema_name]`; empty when it fits."""
    validator = _validator(schema_name, spec)
    return sorted(
        f"{'/'.join(str(p) for p in error.absolute_path) or '<root>'}: {error.message[:200]}"
        for error in validator.iter_errors(body)
    )


def known_parameters(path: str, method: str, spec: Path = SPEC_PATH) -> frozenset[str]:
    """Every parameter name the operation declares: query/path parameters and form fields."""
    operation = _spec(spec)["paths"][path][method.lower()]
    names = {parameter["name"] for parameter in operation.get("parameters", [])}
    form = (
        operation.get("requestBody", {})
        .get("content", {})
        .get("application/x-www-form-urlencoded", {})
        .get("schema", {})
    )
    names.update(form.get("properties", {}))
    return frozenset(names)


def unknown_parameters(
    path: str, method: str, sent: dict[str, Any], spec: Path = SPEC_PATH
) -> list[str]:
    """Top-level names in `sent` that the operation does not declare."""
    known = known_parameters(path, method, spec)
    return sorted(name for name in sent if name not in known)


def response_schema(path: str, method: str, spec: Path = SPEC_PATH) -> str:
    """The component a 200 response of the operation is described by (e.g. "charge")."""
    operation = _spec(spec)["paths"][path][method.lower()]
    content = operation["responses"]["200"]["content"]["application/json"]["schema"]
    ref: str = content["$ref"]
    return ref.rsplit("/", 1)[-1]
