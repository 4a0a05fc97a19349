"""Ledger transitions, each written once in SQLAlchemy Core, and how each database runs them.

A transition is a guarded change (an INSERT … ON CONFLICT DO NOTHING or a conditional UPDATE,
RETURNING what the caller needs) and the rows written only when that change took: its audit
entry, its outbox event. No row back means the guard refused.

PostgreSQL runs a transition as one statement (data-modifying CTEs) on psycopg directly
(pg_direct.py); SQLite, which has none, runs the same parts in one transaction. A transition
that must decide something between its change and its writes (a reservation, a release) runs
as those parts in one transaction on either database (`in_transaction`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import (
    BindParameter,
    ColumnElement,
    Connection,
    Engine,
    Executable,
    Insert,
    Row,
    Select,
    Table,
    Update,
    bindparam,
    exists,
    select,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import StatementError
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.elements import ColumnClause
from sqlalchemy.types import ARRAY, Integer

from worker.adapters.ledger.database import single_statements
from worker.adapters.ledger.pg_direct import run_alone

Params = Mapping[str, Any]


def given(name: str, like: ColumnElement[Any]) -> BindParameter[Any]:
    """The parameter `name`, converted as the column `like` converts its values. Bound as
    p_<name> (a column's own name is reserved in its INSERT or UPDATE); callers pass `name`."""
    return bindparam(f"p_{name}", type_=like.type)


def _bound(params: Params) -> dict[str, Any]:
    return {f"p_{name}": value for name, value in params.items()}


@dataclass(frozen=True)
class Write:
    """A row written when a transition's change took; `values` are bound parameters or
    constants. `returning`: the column it gives back (None when the row was already there)."""

    table: Table
    values: Mapping[str, ColumnElement[Any]]
    returning: str | None = None
    ignore_duplicate: bool = False

    def alone(self) -> Insert:
        stmt = postgresql.insert(self.table).values(dict(self.values))
        return self._finished(stmt)

    def after(self, changed: Any) -> Insert:
        """The INSERT … SELECT that writes the row once per row of the `changed` CTE."""
        names = list(self.values)
        rows = select(*(self.values[name].label(name) for name in names)).where(
            exists(select(changed))
        )
        return self._finished(postgresql.insert(self.table).from_select(names, rows))

    def _finished(self, stmt: postgresql.Insert) -> Insert:
        if self.ignore_duplicate:
            stmt = stmt.on_conflict_do_nothing()
        if self.returning is not None:
            return stmt.returning(self.table.c[self.returning])
        return stmt


@dataclass(frozen=True)
class Transition:
    """`change` RETURNING the caller's columns; the row back is those columns followed by
    each write's `returning` column."""

    change: Insert | Update
    writes: tuple[Write, ...] = ()
    _alone: tuple[Insert, ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_alone", tuple(w.alone() for w in self.writes))

    def as_one_statement(self) -> Select[Any]:
        """PostgreSQL's form: WITH changed AS (…), w0 AS (INSERT … SELECT … WHERE EXISTS
        changed), … SELECT changed.*, (SELECT w.col FROM w) …"""
        changed = self.change.cte("changed")
        returned: list[Any] = list(changed.c)
        ctes = []
        for index, write in enumerate(self.writes):
            cte = write.after(changed).cte(f"w{index}")
            ctes.append(cte)
            if write.returning is not None:
                returned.append(select(cte.c[write.returning]).scalar_subquery())
        return select(*returned).select_from(changed).add_cte(*ctes)

    def in_transaction(
        self,
        conn: Connection,
        params: Params,
        between: Callable[[Row[Any]], Params | None] | None = None,
    ) -> tuple[Any, ...] | None:
        """Its parts on `conn`, inside the caller's transaction. `between` runs after the
        change took and before the writes (it may raise: the caller's transaction rolls
        back); parameters it returns are added to the writes'."""
        bound = _bound(params)
        changed = conn.execute(self.change, bound).one_or_none()
        if changed is None:
            return None
        if between is not None:
            bound.update(_bound(between(changed) or {}))
        returned = list(changed)
        for write, stmt in zip(self.writes, self._alone, strict=True):
            result = conn.execute(stmt, bound)
            if write.returning is not None:
                returned.append(result.scalar_one_or_none())
        return tuple(returned)


class AnyOf(ColumnElement[bool]):
    """`column` is one of the list bound as `name`: `= ANY(array)` on PostgreSQL (one
    parameter, so the text compiles once), an expanding IN elsewhere."""

    inherit_cache = True

    def __init__(self, column: ColumnClause[Any] | Any, name: str) -> None:
        self.column = column
        self.name = name


@compiles(AnyOf)
def _any_of_expanding(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    listed: BindParameter[Any] = bindparam(f"p_{element.name}", expanding=True)
    return compiler.process(element.column.in_(listed), **kw)


@compiles(AnyOf, "postgresql")
def _any_of_array(element: AnyOf, compiler: SQLCompiler, **kw: Any) -> str:
    array = bindparam(f"p_{element.name}", type_=ARRAY(Integer))
    return f"{compiler.process(element.column, **kw)} = ANY({compiler.process(array, **kw)})"


Runnable = Transition | Executable


class Runner:
    """Runs statements and transitions alone (each its own transaction) on one database."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._single = single_statements(engine)

    def one(self, runnable: Runnable, params: Params) -> tuple[Any, ...] | None:
        """Its first row (a transition's: None when its guard refused), or None."""
        if isinstance(runnable, Transition):
            with self._engine.begin() as conn:
                return runnable.in_transaction(conn, params)
        with self._single.connect() as conn:
            result = conn.execute(runnable, _bound(params))
            row = result.first() if result.returns_rows else None
        return None if row is None else tuple(row)


class OnPsycopg(Runner):
    """PostgreSQL: each statement compiled once to psycopg's text (a transition to its one
    statement), run on psycopg directly; parameters and results converted by the columns'
    own types, as SQLAlchemy would."""

    def __init__(self, engine: Engine) -> None:
        super().__init__(engine)
        # By identity: the statements are module constants, each held here with its text.
        self._compiled: dict[int, tuple[Runnable, _Compiled]] = {}

    def one(self, runnable: Runnable, params: Params) -> tuple[Any, ...] | None:
        known = self._compiled.get(id(runnable))
        if known is None:  # once per statement; a race compiles it twice, harmlessly
            stmt = runnable.as_one_statement() if isinstance(runnable, Transition) else runnable
            known = self._compiled[id(runnable)] = (runnable, _Compiled(stmt, self._engine))
        return known[1].run(params)


class _Compiled:
    """One statement as psycopg's text, its placeholders renamed to the callers' own names
    (`p_now` → `now`) so a call copies the caller's parameters once and converts only those
    whose type has a bind processor."""

    def __init__(self, stmt: Any, engine: Engine) -> None:
        dialect = engine.dialect
        compiled = stmt.compile(dialect=dialect)
        self._engine = engine
        self.sql = compiled.string.replace("%(p_", "%(")
        self.constants = {
            name: bind.value
            for name, bind in compiled.binds.items()
            if not bind.required and bind.callable is None
        }
        self.binds = tuple(
            (name.removeprefix("p_"), processor)
            for name, bind in compiled.binds.items()
            if (processor := bind.type.dialect_impl(dialect).bind_processor(dialect)) is not None
        )
        columns: Sequence[Any] = stmt.exported_columns  # a SELECT's columns, or RETURNING's
        self.results = [
            c.type.dialect_impl(dialect).result_processor(dialect, None) for c in columns
        ]
        self._any_result = any(p is not None for p in self.results)

    def run(self, params: Params) -> tuple[Any, ...] | None:
        values = {**params, **self.constants}
        try:
            for name, processor in self.binds:
                values[name] = processor(values[name])
        except (ValueError, TypeError) as exc:  # e.g. a naive datetime: as SQLAlchemy says it
            raise StatementError(str(exc), self.sql, None, exc) from exc
        row = run_alone(self._engine, self.sql, values)
        if row is None or not self._any_result:
            return row
        return tuple(
            value if process is None else process(value)
            for value, process in zip(row, self.results, strict=True)
        )


def runner_for(engine: Engine) -> Runner:
    """Decided once per store: PostgreSQL's one-statement path, or SQLAlchemy's."""
    return OnPsycopg(engine) if engine.dialect.name == "postgresql" else Runner(engine)
