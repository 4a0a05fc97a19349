"""Throughput ceiling of the sandbox: account debits with distinct keys over keep-alive.

    .venv/bin/python -m worker.sandbox.bench --duration 10 --connections 64

Starts a sandbox in a child process (zero latency, no faults, no rate limit) unless --url
is given, then has N aiohttp clients each POST /v1/charges back to back over their own
keep-alive connection, every request with a new idempotency key. Not a test.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator

import aiohttp
import click

from worker.sandbox.admin_client import SandboxAdmin
from worker.sandbox.constants import DEFAULT_API_KEY
from worker.sandbox.runner import wait_until_answering

SOURCE = "acct_1ExpressUS00000001"


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@contextlib.contextmanager
def _child_sandbox() -> Iterator[str]:
    port = _free_port()
    child = subprocess.Popen(  # noqa: S603 - our own module, fixed arguments
        [sys.executable, "-m", "worker.sandbox", "--port", str(port)],
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_answering(SandboxAdmin(url, timeout=1), timeout=15)
        yield url
    finally:
        child.terminate()
        child.wait(timeout=10)


async def _client(
    session: aiohttp.ClientSession, url: str, number: int, stop_at: float, latencies: list[float]
) -> int:
    done = 0
    headers = {"Authorization": f"Bearer {DEFAULT_API_KEY}"}
    while time.perf_counter() < stop_at:
        headers["Idempotency-Key"] = f"bench-{number}-{done}"
        started = time.perf_counter()
        async with session.post(
            url + "/v1/charges",
            data={"source": SOURCE, "amount": "1", "currency": "usd"},
            headers=headers,
        ) as response:
            await response.read()
            if response.status != 200:
                raise RuntimeError(f"unexpected {response.status}: {await response.text()}")
        latencies.append(time.perf_counter() - started)
        done += 1
    return done


async def measure(url: str, connections: int, duration: float) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=connections, force_close=False)
    latencies: list[float] = []
    async with aiohttp.ClientSession(connector=connector) as session:
        await _client(session, url, -1, time.perf_counter() + 0.5, [])  # warm up
        started = time.perf_counter()
        stop_at = started + duration
        counts = await asyncio.gather(
            *(_client(session, url, n, stop_at, latencies) for n in range(connections))
        )
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "requests": float(sum(counts)),
        "seconds": elapsed,
        "requests_per_second": sum(counts) / elapsed,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(0.99 * (len(latencies) - 1))] * 1000,
    }


@click.command()
@click.option("--duration", default=10.0, show_default=True, help="Seconds to measure.")
@click.option("--connections", default=64, show_default=True, help="Concurrent clients.")
@click.option("--url", help="An already running sandbox (default: start one).")
def main(duration: float, connections: int, url: str | None) -> None:
    """Measure the sandbox's requests/s ceiling for account debits."""
    with contextlib.ExitStack() as stack:
        target = url or stack.enter_context(_child_sandbox())
        result = asyncio.run(measure(target, connections, duration))
    click.echo(
        f"{connections} keep-alive clients, {result['seconds']:.1f} s: "
        f"{result['requests']:.0f} debits, {result['requests_per_second']:.0f} req/s, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms"
    )


if __name__ == "__main__":
    main()
