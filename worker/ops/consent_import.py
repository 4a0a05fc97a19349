"""`debit-worker consent import FILE.csv`: read and check a file of consents before any is
granted.

Columns `account,agreement[,granted_by]`, one consent a line; the first line may name them
(a header). Blank lines are skipped. A file with any bad line grants nothing: every bad line
is reported by its number, so the file can be fixed and imported whole.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from pydantic import TypeAdapter, ValidationError

from schemas.commands import AccountId
from worker.adapters.ledger.consents import ConsentGrant

HEADER: Final = ("account", "agreement", "granted_by")
# The ledger's column widths.
MAX_AGREEMENT: Final = 500
MAX_ACTOR: Final = 200

# The same rule as a command's `account`: a consent for any other id could never be used.
_ACCOUNT = TypeAdapter(AccountId)


@dataclass
class ConsentFile:
    grants: list[ConsentGrant] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)  # "line 7: …", in file order


def account_problem(account: str) -> str | None:
    """Why `account` is not a connected account id, or None."""
    try:
        _ACCOUNT.validate_python(account)
    except ValidationError:
        return f"{account!r} is not an account id (acct_ and 1-64 letters or digits)"
    return None


class UnreadableFile(Exception):
    """Not a CSV file in UTF-8; the message says where."""


def read_consents(path: Path, default_actor: str) -> ConsentFile:
    """Every line of the file, checked; `default_actor` grants the lines without granted_by."""
    with path.open(newline="", encoding="utf-8-sig") as handle:  # -sig: a spreadsheet's BOM
        reader = csv.reader(handle)
        try:
            # line_num after each row: the line it ends on (a quoted cell may span lines)
            return parse_rows(((cells, reader.line_num) for cells in reader), default_actor)
        except UnicodeDecodeError as exc:
            raise UnreadableFile(f"{path} is not UTF-8 text ({exc.reason})") from None
        except csv.Error as exc:
            raise UnreadableFile(f"{path} line {reader.line_num}: {exc}") from None


def parse_rows(rows: Iterable[tuple[list[str], int]], default_actor: str) -> ConsentFile:
    """The checked grants of `rows`: each its cells and its line number."""
    found = ConsentFile()
    first = True
    for cells, number in rows:
        values = [cell.strip() for cell in cells]
        if not any(values):
            continue
        if first and values[0].lower() == HEADER[0]:
            first = False
            if tuple(value.lower() for value in values) not in (HEADER[:2], HEADER):
                found.problems.append(
                    f"line {number}: the header must be account,agreement[,granted_by]"
                )
            continue
        first = False
        grant, problem = _row(values, default_actor)
        if problem is not None:
            found.problems.append(f"line {number}: {problem}")
        elif grant is not None:
            found.grants.append(grant)
    return found


def _row(values: list[str], default_actor: str) -> tuple[ConsentGrant | None, str | None]:
    if len(values) not in (2, 3):
        return None, f"{len(values)} column(s); expected account,agreement[,granted_by]"
    account, agreement = values[0], values[1]
    actor = values[2] if len(values) == 3 and values[2] else default_actor
    problem = account_problem(account)
    if problem is None and not agreement:
        problem = "the agreement is empty (where the signed agreement is kept)"
    if problem is None and len(agreement) > MAX_AGREEMENT:
        problem = f"the agreement is longer than {MAX_AGREEMENT} characters"
    if problem is None and len(actor) > MAX_ACTOR:
        problem = f"granted_by is longer than {MAX_ACTOR} characters"
    if problem is not None:
        return None, problem
    return ConsentGrant(account, agreement, actor), None
