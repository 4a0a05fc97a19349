"""The parameters every Stripe list takes: `limit`, the cursors and the `created` filter.

`created` is an integer (that second) or a hash of `gt`, `gte`, `lt`, `lte`; `limit` runs from
1 to 100 (default 10); `starting_after` and `ending_before` name an object of the list, and
only one of them may be given.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from worker.sandbox import errors
from worker.sandbox.forms import FormValue
from worker.sandbox.listing import Key, Page, SortedRun, Window, newest_first, oldest_first

DEFAULT_LIMIT, MAX_LIMIT = 10, 100
PAGINATION_PARAMS = frozenset({"created", "ending_before", "expand", "limit", "starting_after"})
_BOUNDS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class ListParams:
    limit: int
    starting_after: str | None
    ending_before: str | None
    created: Window


def parse_list(query: dict[str, FormValue]) -> ListParams:
    """The pagination parameters of a list request; other names are the caller's to check."""
    starting_after = _cursor(query, "starting_after")
    ending_before = _cursor(query, "ending_before")
    if starting_after is not None and ending_before is not None:
        raise errors.invalid(
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    return ListParams(_limit(query), starting_after, ending_before, _created(query))


def _limit(query: dict[str, FormValue]) -> int:
    raw = query.get("limit")
    if raw is None:
        return DEFAULT_LIMIT
    limit = _integer(raw, "limit")
    if limit < 1:
        raise errors.invalid("This value must be greater than or equal to 1.", param="limit")
    if limit > MAX_LIMIT:
        raise errors.invalid(
            f"This value must be less than or equal to {MAX_LIMIT}.", param="limit"
        )
    return limit


def _cursor(query: dict[str, FormValue], name: str) -> str | None:
    value = query.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise errors.invalid(f"Invalid {name}: must be a string", param=name)
    return value


def _created(query: dict[str, FormValue]) -> Window:
    raw = query.get("created")
    if raw is None or raw == "":
        return Window()
    if not isinstance(raw, dict):
        second = _integer(raw, "created")
        return Window.created_between(second, second)
    first: int | None = None
    last: int | None = None
    for bound, value in raw.items():
        if bound not in _BOUNDS:
            raise errors.parameter_unknown(f"created[{bound}]")
        second = _integer(value, f"created[{bound}]")
        if bound in ("gt", "gte"):
            low = second + 1 if bound == "gt" else second
            first = low if first is None else max(first, low)
        else:
            high = second - 1 if bound == "lt" else second
            last = high if last is None else min(last, high)
    return Window.created_between(first, last)


def _integer(raw: FormValue, param: str) -> int:
    if not isinstance(raw, str):
        raise errors.invalid(f"Invalid integer: {param} must be an integer", param=param)
    try:
        return int(raw, 10)
    except ValueError:
        raise errors.parameter_invalid_integer(param, raw) from None


def paginate(
    params: ListParams,
    runs: Sequence[SortedRun],
    key_of: Callable[[str], Key | None],
    hidden: Callable[[str], bool],
    kind: str,
) -> Page:
    """One page of a list, newest first, inside the `created` window: the first page, the
    one after `starting_after`, or the one before `ending_before`. A cursor must name an
    object of the list (`key_of` knows it), else 400 resource_missing."""
    window = params.created
    if params.ending_before is not None:
        key = _cursor_key(params.ending_before, "ending_before", key_of, kind)
        return oldest_first(runs, window.newer_than(key), params.limit, hidden)
    if params.starting_after is not None:
        key = _cursor_key(params.starting_after, "starting_after", key_of, kind)
        window = window.older_than(key)
    return newest_first(runs, window, params.limit, hidden)


def _cursor_key(ident: str, param: str, key_of: Callable[[str], Key | None], kind: str) -> Key:
    key = key_of(ident)
    if key is None:
        raise errors.resource_missing(kind, ident, param=param, status=400)
    return key
