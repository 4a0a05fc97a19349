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
from typing import Final, Literal

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


def render(spec: SchemaFile) -> str:
    """The exact bytes committed for one model, with its dialect and stable $id: sorted keys,
    two-space indent, final newline."""
    schema = spec.model.model_json_schema(mode=spec.mode)
    document = {"$schema": DIALECT, "$id": spec.schema_id, **schema}
    return json.dumps(document, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write(directory: Path = JSON_DIR) -> list[Path]:
    directory.mkdir(parents=True, exist_ok=True)
    for spec in SCHEMA_FILES:
        (directory / spec.filename).write_text(render(spec), encoding="utf-8")
    return [directory / spec.filename for spec in SCHEMA_FILES]


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
