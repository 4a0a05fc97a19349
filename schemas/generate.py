"""Write the JSON Schema (draft 2020-12) files of the v1 contract from the pydantic models.

    python -m schemas.generate           # (re)write schemas/json/*.json
    python -m schemas.generate --check   # exit 1 and name the files that differ (CI drift check)

Commands are described as the worker *accepts* them (validation mode: fields with a default
may be left out); events as the worker *writes* them (serialization mode: every field is
present, null when unset).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal

from pydantic import BaseModel

from schemas.commands import DebitRequested
from schemas.events import (
    SCHEMA_BASE_URI,
    DebitFailed,
    DebitFailedEvent,
    DebitSucceeded,
    DebitSucceededEvent,
)

DIALECT: Final = "https://json-schema.org/draft/2020-12/schema"
JSON_DIR: Final = Path(__file__).resolve().parent / "json"


@dataclass(frozen=True, slots=True)
class SchemaFile:
    filename: str
    model: type[BaseModel]
    mode: Literal["validation", "serialization"]

    @property
    def schema_id(self) -> str:
        return f"{SCHEMA_BASE_URI}{self.filename}"


SCHEMA_FILES: Final = (
    SchemaFile("debit-requested.v1.json", DebitRequested, "validation"),
    SchemaFile("debit-succeeded.v1.json", DebitSucceeded, "serialization"),
    SchemaFile("debit-failed.v1.json", DebitFailed, "serialization"),
    SchemaFile("debit-succeeded-event.v1.json", DebitSucceededEvent, "serialization"),
    SchemaFile("debit-failed-event.v1.json", DebitFailedEvent, "serialization"),
)


def build_schema(spec: SchemaFile) -> dict[str, Any]:
    """The JSON Schema of one model, with its dialect and stable $id."""
    schema = spec.model.model_json_schema(mode=spec.mode)
    return {"$schema": DIALECT, "$id": spec.schema_id, **schema}


def render(spec: SchemaFile) -> str:
    """The exact bytes committed for one model: sorted keys, two-space indent, final newline."""
    return json.dumps(build_schema(spec), indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for spec in SCHEMA_FILES:
        path = directory / spec.filename
        path.write_text(render(spec), encoding="utf-8")
        written.append(path)
    return written


def check(directory: Path = JSON_DIR) -> list[str]:
    """Names of the files that are missing, out of date, or not generated at all (stale)."""
    expected = {spec.filename: render(spec) for spec in SCHEMA_FILES}
    drifted = []
    for name, text in expected.items():
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            drifted.append(name)
    if directory.is_dir():
        drifted.extend(p.name for p in directory.glob("*.json") if p.name not in expected)
    return sorted(drifted)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m schemas.generate", description=__doc__)
    parser.add_argument(
        "--check", action="store_true", help="write nothing; exit 1 if a file differs"
    )
    parser.add_argument("--dir", type=Path, default=JSON_DIR, help="output directory")
    args = parser.parse_args(argv)
    if args.check:
        drifted = check(args.dir)
        for name in drifted:
            print(f"out of date: {args.dir / name}", file=sys.stderr)
        if drifted:
            print("run `make schemas` (python -m schemas.generate) and commit", file=sys.stderr)
            return 1
        return 0
    for path in write(args.dir):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
