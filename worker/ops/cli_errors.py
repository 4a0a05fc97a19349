"""The CLI's one place for failures an operator can fix: each becomes one `Error: …` line that
says what is wrong and what to do, and a non-zero exit, instead of a traceback.

Known failures are recognised by their class names along the exception's chain, so nothing
here imports the libraries that raise them (the CLI answers `--help` without loading them).
Anything not recognised is a bug, and keeps its traceback.
"""

from __future__ import annotations

import errno
import re
from collections.abc import Callable, Iterator
from typing import Any, Final
from urllib.parse import unquote, urlsplit

import click

# ctx.meta keys (shared by every context of one invocation): what the command talks to, so
# that an error can name it.
DATABASE: Final = "debit_worker.database_url"
BROKER: Final = "debit_worker.broker_url"

_CREDENTIALS = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/@\s]*@")


class AnsweringGroup(click.Group):
    """The root group: every command runs inside its `invoke`, so this is the one place
    where a known failure is turned into a sentence."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.ClickException as exc:
            if type(exc) is not click.ClickException or "\n" not in exc.message:
                raise  # click's own usage errors are one line already
            raise click.ClickException(one_line(exc.message)) from None
        except Exception as exc:
            sentence = explain(exc, ctx.meta)
            if sentence is None:
                raise
            raise click.ClickException(sentence) from None


def talking_to(*, database_url: str | None = None, broker_url: str | None = None) -> None:
    """Record what the running command connects to (errors name it, without credentials)."""
    meta = click.get_current_context().meta
    if database_url is not None:
        meta[DATABASE] = database_url
    if broker_url is not None:
        meta[BROKER] = broker_url


def explain(exc: BaseException, meta: dict[str, Any] | None = None) -> str | None:
    """One line saying what went wrong and what to do, or None: not a failure we know."""
    chain = list(_chain(exc))
    where = meta or {}
    for explainer in _EXPLAINERS:
        for link in chain:
            sentence = explainer(link, where)
            if sentence is not None:
                return one_line(without_credentials(sentence))
    return None


def one_line(text: str) -> str:
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def without_credentials(text: str) -> str:
    """URLs with their user and password left out."""
    return _CREDENTIALS.sub(r"\g<scheme>", text)


def address(url: str | None) -> str:
    """Where a URL points, without its credentials ('' when unknown): host:port/database,
    host:port vhost NAME, or a SQLite file."""
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.scheme.startswith("sqlite"):
        return parts.path.removeprefix("/") or "(in memory)"
    where = f"{parts.hostname or ''}{f':{parts.port}' if parts.port else ''}"
    if parts.scheme.startswith("amqp"):
        return f"{where} vhost {unquote(parts.path[1:]) or '/'}"
    return f"{where}{parts.path}"


def _database_name(url: str | None) -> str:
    return unquote(urlsplit(url).path.lstrip("/")) if url else ""


# --- the explainers, most specific first ---------------------------------------------------


def _chain(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        yield link
        link = link.__cause__ or link.__context__


def _names(exc: BaseException) -> set[str]:
    return {f"{cls.__module__}.{cls.__qualname__}" for cls in type(exc).__mro__}


def _raised_in(exc: BaseException, *packages: str) -> bool:
    tb = exc.__traceback__
    while tb is not None:
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if module.partition(".")[0] in packages:
            return True
        tb = tb.tb_next
    return False


def _first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0].strip() if text else type(exc).__name__


def _settings(exc: BaseException, _where: dict[str, Any]) -> str | None:
    if "worker.settings.SettingsError" in _names(exc):
        return str(exc)
    return None


def _rules_file(exc: BaseException, _where: dict[str, Any]) -> str | None:
    if "worker.domain.rule_tables.RuleFileError" in _names(exc):
        return f"{exc}: fix the file DEBIT_WORKER_RULES_FILE names (docs/rules.md)"
    return None


def _stripe_refused(exc: BaseException, _where: dict[str, Any]) -> str | None:
    names = _names(exc)
    if "worker.domain.errors.OperatorActionNeeded" in names:
        refusal = _first_line(exc)  # the gateway's own sentence names Stripe's error
    elif names & {"stripe._error.AuthenticationError", "stripe._error.PermissionError"}:
        refusal = f"Stripe refused the worker's credentials ({_first_line(exc)})"
    else:
        return None
    return (
        f"{refusal}: set DEBIT_WORKER_STRIPE_API_KEY to the platform's secret key (sk_…) or a "
        "restricted key (rk_…) with the permissions listed in docs/operations.md (Live mode)"
    )


_SOME_BROKER: Final = "(the address in DEBIT_WORKER_BROKER_URL)"


def _broker_refused(exc: BaseException, where: dict[str, Any]) -> str | None:
    names = _names(exc)
    broker = address(where.get(BROKER)) or _SOME_BROKER
    if "amqp.exceptions.AccessRefused" in names:
        return (
            f"RabbitMQ at {broker} refused the login ({_first_line(exc)}): check the user and "
            "password in DEBIT_WORKER_BROKER_URL"
        )
    if "amqp.exceptions.NotAllowed" in names:
        return (
            f"RabbitMQ at {broker} does not let this user into the virtual host "
            f"({_first_line(exc)}): check the vhost in DEBIT_WORKER_BROKER_URL and the user's "
            "permissions (rabbitmqctl set_permissions)"
        )
    if "amqp.exceptions.NotFound" in names and "exchange" in str(exc):
        return (
            f"RabbitMQ at {broker} has no such exchange ({_first_line(exc)}): the topology is "
            "not declared in this vhost; start the worker once (`debit-worker run` declares "
            "every exchange and queue), or check the vhost in DEBIT_WORKER_BROKER_URL"
        )
    return None


_NO_DATABASE = (
    "the ledger database {database} does not exist ({cause}): create it "
    '(CREATE DATABASE "{name}", or createdb), then run `debit-worker migrate`'
)
_NOT_MIGRATED = (
    "the ledger database {database} is not migrated ({cause}): run `debit-worker migrate`"
)
_REFUSED_LOGIN = (
    "the ledger database {database} refused the login ({cause}): check the user and "
    "password in DEBIT_WORKER_DATABASE_URL"
)
_NO_FILE = (
    "cannot open the SQLite ledger {database} ({cause}): check that its directory exists "
    "and is writable, or set DEBIT_WORKER_DATABASE_URL"
)
_UNREACHABLE = (
    "cannot reach the ledger database at {database} ({cause}): check that the database "
    "server runs there and DEBIT_WORKER_DATABASE_URL"
)
_NOT_READY = (
    "the ledger database {database} does not take connections now ({cause}): run the "
    "command again once it has started"
)
_LEDGER_FAILED = (
    "the ledger database {database} failed ({cause}): check that the database runs and "
    "DEBIT_WORKER_DATABASE_URL"
)
# What the driver says (every marker, lower-cased) → the sentence; the first match wins.
_LEDGER_CASES: Final = (
    (('database "', "does not exist"), _NO_DATABASE),
    (("no such table",), _NOT_MIGRATED),  # SQLite
    (("no such column",), _NOT_MIGRATED),
    (("does not exist",), _NOT_MIGRATED),  # PostgreSQL: relation / column "…" does not exist
    (("password",), _REFUSED_LOGIN),
    (("authentication",), _REFUSED_LOGIN),
    (("unable to open database file",), _NO_FILE),
    (("the database system is",), _NOT_READY),  # … starting up / shutting down / in recovery
    (("connection refused",), _UNREACHABLE),
    (("could not translate host name",), _UNREACHABLE),
    (("name or service not known",), _UNREACHABLE),
    (("timeout",), _UNREACHABLE),
    (("timed out",), _UNREACHABLE),
    (("no route to host",), _UNREACHABLE),
    (("network is unreachable",), _UNREACHABLE),
    (("server closed the connection",), _UNREACHABLE),
)
# The database's own trouble (unreachable, refused, missing), through SQLAlchemy or psycopg.
_LEDGER_TROUBLE: Final = frozenset(
    {
        "sqlalchemy.exc.OperationalError",
        "sqlalchemy.exc.InterfaceError",
        "psycopg.OperationalError",
        "psycopg.InterfaceError",
    }
)
# A statement the database refused: a missing table or column is a schema not migrated; any
# other refusal is a bug, and keeps its traceback.
_REFUSED_STATEMENT: Final = frozenset(
    {"sqlalchemy.exc.ProgrammingError", "psycopg.ProgrammingError"}
)


def _ledger(exc: BaseException, where: dict[str, Any]) -> str | None:
    names = _names(exc)
    trouble, refused = bool(names & _LEDGER_TROUBLE), bool(names & _REFUSED_STATEMENT)
    if not (trouble or refused):
        return None
    url = where.get(DATABASE)
    cause = _first_line(exc)
    lowered = cause.lower()
    template = next(
        (sentence for markers, sentence in _LEDGER_CASES if all(m in lowered for m in markers)),
        None,
    )
    if refused and template is not _NOT_MIGRATED:
        return None
    return (template or _LEDGER_FAILED).format(
        database=address(url) or "(the address in DEBIT_WORKER_DATABASE_URL)",
        cause=cause,
        name=_database_name(url) or "NAME",
    )


def _broker_unreachable(exc: BaseException, where: dict[str, Any]) -> str | None:
    names = _names(exc)
    if "kombu.exceptions.OperationalError" in names or (
        isinstance(exc, OSError) and _raised_in(exc, "amqp", "kombu")
    ):
        broker = address(where.get(BROKER)) or _SOME_BROKER
        return (
            f"cannot reach RabbitMQ at {broker} ({_first_line(exc)}): check that it runs and "
            "DEBIT_WORKER_BROKER_URL"
        )
    return None


def _port_taken(exc: BaseException, _where: dict[str, Any]) -> str | None:
    if isinstance(exc, OSError) and exc.errno == errno.EADDRINUSE:
        return (
            f"{_first_line(exc)}: another process listens there; stop it, or choose another "
            "port (--port)"
        )
    return None


def _redis(exc: BaseException, _where: dict[str, Any]) -> str | None:
    if "redis.exceptions.ConnectionError" in _names(exc):
        return (
            f"cannot reach Redis ({_first_line(exc)}): check that it runs and "
            "DEBIT_WORKER_RATE_BUDGET_REDIS_URL"
        )
    return None


def _transient(exc: BaseException, _where: dict[str, Any]) -> str | None:
    if "worker.domain.errors.TransientFailure" in _names(exc):
        return f"{_first_line(exc)}: a passing failure; run the command again"
    return None


_EXPLAINERS: Final[tuple[Callable[[BaseException, dict[str, Any]], str | None], ...]] = (
    _settings,
    _rules_file,
    _stripe_refused,
    _broker_refused,
    _ledger,
    _broker_unreachable,
    _redis,
    _port_taken,
    _transient,
)
