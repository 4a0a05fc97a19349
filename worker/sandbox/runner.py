"""Run a sandbox on its own event loop in a background thread, for tests, demo and bench."""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from worker.sandbox.admin_client import SandboxAdmin
from worker.sandbox.app import build_app
from worker.sandbox.constants import ALLOW_FLAG, DEFAULT_API_KEY
from worker.sandbox.core import Sandbox
from worker.sandbox.faults import Faults
from worker.sandbox.seed import load_seed

STARTUP_TIMEOUT_SECONDS = 10.0


class NotLoopback(ValueError):
    """The sandbox was asked to listen beyond this machine without saying so explicitly."""

    def __init__(self, host: str) -> None:
        super().__init__(
            f"host {host!r} is not a loopback address, and the sandbox's /_sandbox/ admin "
            f"routes have no authentication: pass {ALLOW_FLAG} to listen there anyway (in a "
            "container whose port is published on 127.0.0.1 only, say)"
        )


def is_loopback(host: str) -> bool:
    """Only `localhost` and loopback addresses (127.0.0.0/8, ::1); a name other than
    localhost, or an empty host (every interface), is not."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def require_loopback(host: str, *, allow_non_loopback: bool = False) -> None:
    if not allow_non_loopback and not is_loopback(host):
        raise NotLoopback(host)


@dataclass(frozen=True)
class RunningSandbox:
    url: str
    api_key: str
    admin: SandboxAdmin


async def serve(sandbox: Sandbox, host: str, port: int) -> web.AppRunner:
    """Start serving; returns the runner (its `addresses` tell the bound port)."""
    runner = web.AppRunner(build_app(sandbox), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024, reuse_address=True)
    await site.start()
    return runner


@contextlib.contextmanager
def running_sandbox(
    seed: Path | None = None,
    *,
    api_key: str = DEFAULT_API_KEY,
    faults: Faults | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    allow_non_loopback: bool = False,
) -> Iterator[RunningSandbox]:
    """Serve a sandbox until the `with` block ends; `port=0` picks a free port. A host that
    is not loopback raises NotLoopback unless `allow_non_loopback`."""
    require_loopback(host, allow_non_loopback=allow_non_loopback)
    sandbox = Sandbox(load_seed(seed), api_key=api_key, faults=faults)
    loop = asyncio.new_event_loop()
    started = threading.Event()
    box: dict[str, object] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        try:
            box["runner"] = loop.run_until_complete(serve(sandbox, host, port))
        except OSError as exc:  # e.g. the port is taken: reported to the starting thread
            box["error"] = exc
            return
        finally:
            started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, name="debit-worker-sandbox", daemon=True)
    thread.start()
    if not started.wait(STARTUP_TIMEOUT_SECONDS) or "error" in box:
        raise RuntimeError(f"sandbox did not start: {box.get('error')!r}")
    runner = box["runner"]
    assert isinstance(runner, web.AppRunner)
    bound_host, bound_port = runner.addresses[0][:2]
    url = f"http://{bound_host}:{bound_port}"
    admin = SandboxAdmin(url)
    try:
        wait_until_answering(admin)
        yield RunningSandbox(url=url, api_key=api_key, admin=admin)
    finally:
        asyncio.run_coroutine_threadsafe(runner.cleanup(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def wait_until_answering(admin: SandboxAdmin, timeout: float = STARTUP_TIMEOUT_SECONDS) -> None:
    deadline = time.monotonic() + timeout
    while not admin.healthy():
        if time.monotonic() > deadline:
            raise RuntimeError(f"sandbox at {admin.url} does not answer")
        time.sleep(0.02)
