"""Dependencies point inward: the adapters (Stripe, the ledger) depend on the domain's types,
never the other way round.

Read from the source with `ast`, so a stray import fails here before it tangles the layers.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Final

import pytest

WORKER: Final = Path(__file__).resolve().parents[2] / "worker"

# The domain (worker/domain): the types the ports speak, the ports, the decision and the
# data it reads.
DOMAIN: Final = tuple(
    f"worker.domain.{path.stem}"
    for path in sorted((WORKER / "domain").glob("*.py"))
    if path.stem != "__init__"
)
# Libraries only an adapter may talk to.
IO_LIBRARIES: Final = frozenset(
    {"stripe", "sqlalchemy", "psycopg", "kombu", "celery", "amqp", "redis", "urllib3"}
)


def _source(module: str) -> Path:
    path = WORKER.parent / Path(*module.split("."))
    return path / "__init__.py" if path.is_dir() else path.with_suffix(".py")


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth (inside functions and TYPE_CHECKING too)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            found.add(node.module)
    return found


def _worker_imports(path: Path) -> set[str]:
    return {name for name in _imports(path) if name.split(".")[0] == "worker"}


def test_every_domain_module_is_checked() -> None:
    assert "worker.domain.decision" in DOMAIN
    assert "worker.domain.types" in DOMAIN


@pytest.mark.parametrize("module", DOMAIN)
def test_the_domain_imports_only_the_domain_and_no_io_library(module: str) -> None:
    # Given a domain module's source
    imports = _imports(_source(module))

    # When its imports are read
    outside = {
        name
        for name in imports
        if name.split(".")[0] == "worker" and name != "worker.domain" and name not in DOMAIN
    }
    io = {name for name in imports if name.split(".")[0] in IO_LIBRARIES}

    # Then it imports no adapter (Stripe gateway, ledger, publisher…) and no I/O library
    assert (outside, io) == (set(), set())


def test_the_ledger_imports_from_the_worker_only_itself_and_the_domain_types() -> None:
    # Given every module of the ledger package
    sources = sorted((WORKER / "adapters" / "ledger").rglob("*.py"))
    assert sources

    # When their imports from the worker are read
    foreign = {
        f"{path.relative_to(WORKER.parent)}: {name}"
        for path in sources
        for name in _worker_imports(path)
        if not name.startswith("worker.adapters.ledger")
        and name not in {"worker.domain.types", "worker.domain.errors"}
    }

    # Then none reaches into a policy module or an adapter: its types are the domain's
    assert foreign == set()


def test_the_stripe_adapter_takes_its_types_from_the_domain() -> None:
    # Given the Stripe adapter's source
    imports = _worker_imports(WORKER / "adapters" / "stripe_gateway.py")

    # Then it speaks the domain's types and knows nothing of the ledger, the ports or the
    # decision that use it
    assert "worker.domain.types" in imports
    assert {
        name
        for name in imports
        if name.startswith(
            (
                "worker.adapters.ledger",
                "worker.domain.ports",
                "worker.handlers",
                "worker.domain.decision",
            )
        )
    } == set()
