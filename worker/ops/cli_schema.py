"""Is the ledger already at the newest schema? Asked by `run --processes N` before it becomes
the supervisor, without loading SQLAlchemy and Alembic (about a second of its start), so that
the worker processes start sooner on a ledger that needs no migration: the usual case, since
Compose's `migrate` service, or the previous start, migrated it.

Only a sure yes skips the migration: a database it cannot read this way (another driver,
URL options libpq does not take, a missing file, an older schema) is migrated as always.
"""

from __future__ import annotations

import re
import sqlite3
from contextlib import closing
from pathlib import Path
from typing import Final
from urllib.parse import unquote, urlsplit, urlunsplit

VERSIONS: Final = Path(__file__).resolve().parent.parent / "adapters/ledger/migrations/versions"
_REVISION = re.compile(r'^revision\s*=\s*"([^"]+)"', re.MULTILINE)
_DOWN = re.compile(r'^down_revision\s*=\s*(?:None|"([^"]*)")', re.MULTILINE)
_POSTGRESQL: Final = frozenset({"postgresql", "postgresql+psycopg", "postgres"})


def newest_revision(versions: Path = VERSIONS) -> str | None:
    """The one revision no other revision follows, read from the migration files (None when
    there is not exactly one: let Alembic decide)."""
    revisions: set[str] = set()
    followed: set[str] = set()
    for script in versions.glob("*.py"):
        text = script.read_text(encoding="utf-8")
        revision, down = _REVISION.search(text), _DOWN.search(text)
        if revision is None or down is None:
            continue  # not a migration (__init__.py)
        revisions.add(revision.group(1))
        if down.group(1):
            followed.add(down.group(1))
    heads = revisions - followed
    return heads.pop() if len(heads) == 1 else None


def known_at_head(database_url: str) -> bool:
    """True only when the database's recorded revision is the newest one."""
    head = newest_revision()
    return head is not None and _recorded_revisions(database_url) == [head]


def _recorded_revisions(database_url: str) -> list[str] | None:
    """alembic_version's rows, or None when they cannot be read this way."""
    parts = urlsplit(database_url)
    if parts.scheme in _POSTGRESQL:
        return _on_postgresql(urlunsplit(("postgresql", *parts[1:])))
    if parts.scheme == "sqlite" and parts.path not in {"", "/"}:
        return _on_sqlite(Path(unquote(parts.path[1:])))
    return None


def _on_postgresql(conninfo: str) -> list[str] | None:
    import psycopg  # noqa: PLC0415 - only for a PostgreSQL ledger

    try:
        with psycopg.connect(conninfo, connect_timeout=10) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except psycopg.Error:
        return None  # unreachable, refused, not migrated, or options libpq refuses
    return [str(row[0]) for row in rows]


def _on_sqlite(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    try:
        with closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True, timeout=30)) as conn:
            rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.Error:
        return None
    return [str(row[0]) for row in rows]
