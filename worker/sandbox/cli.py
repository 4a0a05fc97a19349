"""`debit-worker sandbox` / `python -m worker.sandbox`: serve the local Stripe.

Loading this module loads click and the sandbox's constants only, so that `--help` answers at
once; the server (aiohttp, the models) is imported when the command runs.
"""

from __future__ import annotations

import gc
from pathlib import Path

import click

from worker.sandbox.constants import ALLOW_FLAG, DEFAULT_API_KEY, DEFAULT_PORT, TEST_MODE_RPS

_SHARE = click.FloatRange(0.0, 1.0)


@click.command("sandbox", context_settings={"show_default": True})
@click.option(
    "--host",
    default="127.0.0.1",
    help=f"Interface to listen on; one that is not loopback needs {ALLOW_FLAG}.",
)
@click.option(
    ALLOW_FLAG,
    "allow_non_loopback",
    is_flag=True,
    help="Listen on a non-loopback --host (0.0.0.0 in a container) although the admin "
    "routes have no authentication.",
)
@click.option("--port", default=DEFAULT_PORT, type=int, help="TCP port (0 picks a free one).")
@click.option(
    "--seed",
    "seed_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="YAML/JSON world to start from. [default: worker/sandbox/default_seed.yaml]",
)
@click.option(
    "--api-key",
    default=DEFAULT_API_KEY,
    envvar="DEBIT_WORKER_SANDBOX_API_KEY",
    help="The only secret key accepted (Authorization: Bearer ...).",
)
@click.option("--latency-ms", default=0.0, type=float, help="Fixed delay added to each request.")
@click.option(
    "--latency-p50-ms", type=float, help="Lognormal delay: median (with --latency-p99-ms)."
)
@click.option("--latency-p99-ms", type=float, help="Lognormal delay: 99th percentile.")
@click.option("--rate-limit-share", default=0.0, type=_SHARE, help="Share answered 429 rate_limit.")
@click.option(
    "--server-error-share", default=0.0, type=_SHARE, help="Share answered 500 api_error."
)
@click.option(
    "--drop-before-share", default=0.0, type=_SHARE, help="Share cut off before any effect."
)
@click.option(
    "--drop-after-share",
    default=0.0,
    type=_SHARE,
    help="Share cut off after the effect (money moved, key stored, response lost).",
)
@click.option(
    "--executed-server-error-share",
    default=0.0,
    type=_SHARE,
    help="Share of debits carried out but answered 500 api_error (stored under the key).",
)
@click.option(
    "--executed-late-share",
    default=0.0,
    type=_SHARE,
    help="Share of debits answered 500 (stored) and carried out --executed-late-seconds later.",
)
@click.option(
    "--executed-late-seconds",
    default=30.0,
    type=click.FloatRange(min=0.0),
    help="Sandbox-clock delay before an executed_late debit is carried out.",
)
@click.option("--writes-only", is_flag=True, help="Inject 429/500/drops only into POSTs.")
@click.option(
    "--rate-limit",
    "rate_limit_rps",
    type=float,
    help=f"Requests per second (token bucket, 429 beyond). Stripe test mode: {TEST_MODE_RPS:g}.",
)
@click.option("--random-seed", type=int, help="Seed for reproducible fault sequences.")
def sandbox(  # click passes every option by keyword
    *,
    host: str,
    allow_non_loopback: bool,
    port: int,
    seed_file: Path | None,
    api_key: str,
    latency_ms: float,
    latency_p50_ms: float | None,
    latency_p99_ms: float | None,
    rate_limit_share: float,
    server_error_share: float,
    drop_before_share: float,
    drop_after_share: float,
    executed_server_error_share: float,
    executed_late_share: float,
    executed_late_seconds: float,
    writes_only: bool,
    rate_limit_rps: float | None,
    random_seed: int | None,
) -> None:
    """Serve a local, stateful Stripe for account debits (POST /v1/charges source=acct_...).

    Point the official SDK at it with
    StripeClient(API_KEY, base_addresses={"api": "http://HOST:PORT"}).
    Test-only admin routes (no auth!) live under /_sandbox/: state, check, faults, clock,
    reset, accounts, charges. Never expose this server beyond localhost.
    """
    from aiohttp import web  # noqa: PLC0415 - the server, only to serve
    from pydantic import ValidationError  # noqa: PLC0415

    from worker.sandbox.app import build_app  # noqa: PLC0415
    from worker.sandbox.core import Sandbox  # noqa: PLC0415
    from worker.sandbox.faults import Faults  # noqa: PLC0415
    from worker.sandbox.runner import NotLoopback, require_loopback  # noqa: PLC0415
    from worker.sandbox.seed import load_seed  # noqa: PLC0415

    try:
        require_loopback(host, allow_non_loopback=allow_non_loopback)
    except NotLoopback as exc:
        raise click.ClickException(str(exc)) from None
    try:
        faults = Faults(
            latency_ms=latency_ms,
            latency_p50_ms=latency_p50_ms,
            latency_p99_ms=latency_p99_ms,
            rate_limit_share=rate_limit_share,
            server_error_share=server_error_share,
            drop_before_share=drop_before_share,
            drop_after_share=drop_after_share,
            executed_server_error_share=executed_server_error_share,
            executed_late_share=executed_late_share,
            executed_late_seconds=executed_late_seconds,
            writes_only=writes_only,
            rate_limit_rps=rate_limit_rps,
            random_seed=random_seed,
        )
    except ValidationError as exc:
        raise click.BadParameter(str(exc)) from exc
    world = Sandbox(load_seed(seed_file), api_key=api_key, faults=faults)
    click.echo(f"sandbox: platform {world.ledger.platform.id}, http://{host}:{port}", err=True)
    _no_full_collections()
    web.run_app(build_app(world), host=host, port=port, access_log=None, print=None)


def _no_full_collections() -> None:
    """The sandbox keeps every object Stripe would: after a 30-minute soak (175,000 debits)
    a full collection walks a million of them and stalls the event loop for about a second,
    which bunched requests into 429s and doubled the soak's p99. What it keeps forms no
    cycles to reclaim, so only the young generations are collected."""
    gc.freeze()
    young, middle, _ = gc.get_threshold()
    gc.set_threshold(young, middle, 2**31 - 1)


def main() -> None:
    sandbox()
