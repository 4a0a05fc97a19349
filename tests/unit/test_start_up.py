"""What a worker process and `sandbox --help` load as they start: what they use, not more
(bench/startup.py measures the seconds; these keep the causes away)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest

import worker.sandbox
from worker.ops.cli_run import WORKER_START_MODULES


def _loaded_after(code: str) -> set[str]:
    """The top-level packages a fresh interpreter has loaded after running `code`."""
    probe = f"{code}\nimport sys\nprint(' '.join({{m.split('.')[0] for m in sys.modules}}))"
    done = subprocess.run([sys.executable, "-c", probe], check=True, capture_output=True, text=True)
    return set(done.stdout.split())


def test_a_worker_loads_neither_the_stripe_sdks_unused_http_clients_nor_redis() -> None:
    # Given a worker process's code loaded as `run` loads it, without a Redis URL
    loaded = _loaded_after("from worker.ops.cli_run import load_worker\nload_worker()")
    # Then the worker's own libraries are there
    assert {"celery", "kombu", "stripe", "sqlalchemy", "psycopg"} <= loaded
    # And neither the HTTP libraries the Stripe SDK would choose by default (the worker
    # hands it its own client) nor Redis (only a shared budget uses it)
    assert {"requests", "aiohttp", "httpx", "redis"}.isdisjoint(loaded)


def test_the_http_libraries_hidden_from_the_stripe_sdk_stay_importable() -> None:
    # Given the worker's code loaded / When something else imports aiohttp afterwards
    loaded = _loaded_after(
        "from worker.ops.cli_run import load_worker\nload_worker()\nimport aiohttp"
    )
    # Then it loads (it was hidden only while the SDK loaded)
    assert "aiohttp" in loaded


@pytest.mark.parametrize("module", WORKER_START_MODULES)
def test_every_module_loaded_ahead_for_a_worker_start_exists(module: str) -> None:
    # A library upgrade that moves one would make the supervisor fail at start
    assert importlib.util.find_spec(module) is not None


def test_the_sandbox_command_loads_neither_the_server_nor_its_models_for_help() -> None:
    # Given a fresh interpreter / When the sandbox's command (`sandbox --help`) is loaded
    loaded = _loaded_after("import worker.sandbox.cli")
    # Then the server and the models it needs only to serve are not loaded
    assert {"aiohttp", "pydantic", "yaml"}.isdisjoint(loaded)


def test_the_sandbox_packages_names_load_their_module_on_first_use() -> None:
    # Given the package's public names / When each is asked for
    from worker.sandbox import RunningSandbox, errors  # noqa: PLC0415 - the lazy path
    from worker.sandbox.runner import RunningSandbox as FromItsModule  # noqa: PLC0415

    # Then each is its module's own, and submodules import as before
    assert RunningSandbox is FromItsModule
    assert errors.__name__ == "worker.sandbox.errors"
    assert all(getattr(worker.sandbox, name) is not None for name in worker.sandbox.__all__)
    # And a name it does not have is an AttributeError, as on any module
    with pytest.raises(AttributeError):
        _ = worker.sandbox.no_such_name
