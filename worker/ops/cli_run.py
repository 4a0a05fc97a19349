"""`debit-worker run`: check, migrate, declare, then become the worker (or its supervisor).

With several processes, this process only checks the settings and migrates (when the ledger is
not already at the newest schema) before it becomes the supervisor: it imports the worker's
code once, then forks each worker process, which builds its own services and declares the
topology as it starts. Start-up is mostly imports (see bench/startup.py): done once and shared,
they no longer delay each process.
"""

from __future__ import annotations

import importlib
import os
import platform
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from worker.settings import Settings

if TYPE_CHECKING:
    from celery import Celery


def run_worker(settings: Settings, *, migrate: bool, echo: Callable[[str], None]) -> None:
    settings.require_safe_to_run()  # build_worker checks again; this is before migrating
    if settings.processes > 1:
        _supervise(settings, migrate=migrate, echo=echo)
    _work(settings, migrate=migrate, echo=echo)


def _migrate(settings: Settings, echo: Callable[[str], None]) -> None:
    # Imported here: a worker process started by the supervisor (--no-migrate) never loads
    # the migrations.
    from worker.adapters.ledger.database import make_engine  # noqa: PLC0415
    from worker.adapters.ledger.migrate import upgrade  # noqa: PLC0415

    engine = make_engine(settings.database_url, pool_size=1)
    try:
        echo(f"ledger schema at revision {upgrade(engine)}")
    finally:
        engine.dispose()


def _supervise(settings: Settings, *, migrate: bool, echo: Callable[[str], None]) -> None:
    """Become the supervisor of `settings.processes` worker processes (never returns)."""
    from worker.ops.cli_schema import known_at_head, newest_revision  # noqa: PLC0415
    from worker.ops.supervisor import supervise  # noqa: PLC0415

    if migrate and known_at_head(settings.database_url):
        echo(f"ledger schema at revision {newest_revision()}")
    elif migrate:
        _migrate(settings, echo)
    sys.exit(supervise(settings, settings.processes, prepare=load_worker, work=_worker_process))


def _worker_process() -> None:
    """One supervised worker process, forked from the supervisor: `run` with one process and
    no migration, configured by the environment the supervisor made for it."""
    from worker.ops.cli import main  # noqa: PLC0415 - loaded already; not at import (a cycle)

    main(["run", "--no-migrate", "--processes", "1"], prog_name="debit-worker")


# Libraries the Stripe SDK imports as it loads, to choose its default HTTP clients (requests,
# then httpx or aiohttp for async calls). The worker hands it its own (worker/adapters/
# stripe_http.py), so none is ever used here: hidden while the SDK loads, they cost nothing
# instead of a sixth of a second of each start.
_STRIPE_DEFAULT_CLIENT_LIBRARIES: Final = ("requests", "httpx", "anyio", "aiohttp", "pycurl")

# What a worker process loads as it starts, beyond what importing worker.app loads: Celery's
# worker (which imports most of its parts only as it builds and starts one), the AMQP
# transport, the Stripe client. One missing costs its import in each process, no more.
WORKER_START_MODULES: Final = (
    "worker.ops.observability",
    "worker.transport.plain_consumer",
    "billiard.pool",
    "celery.app.amqp",
    "celery.app.control",
    "celery.app.events",
    "celery.app.log",
    "celery.app.routes",
    "celery.apps.worker",
    "celery.backends.base",
    "celery.concurrency.thread",
    "worker.transport.thread_pool",
    "celery.events",
    "celery.fixups.django",
    "celery.worker.autoscale",
    "celery.worker.components",
    "celery.worker.consumer",
    "celery.worker.consumer.delayed_delivery",
    "celery.worker.strategy",
    "kombu.transport.pyamqp",
    "stripe._account",
    "stripe._object_classes",
    "stripe._stripe_client",
)


def load_worker() -> None:
    """Import the code a worker process runs (its start is mostly this). Opens nothing:
    the supervisor forks its processes after it."""
    if "stripe" not in sys.modules:
        hidden = [name for name in _STRIPE_DEFAULT_CLIENT_LIBRARIES if name not in sys.modules]
        for name in hidden:  # None: `import name` fails (ImportError), as if not installed
            sys.modules[name] = None  # type: ignore[assignment]
        try:
            importlib.import_module("stripe")
        finally:
            for name in hidden:
                del sys.modules[name]  # importable again, by anything else that needs it
    importlib.import_module("worker.app")
    for module in WORKER_START_MODULES:
        importlib.import_module(module)
    platform.platform()  # for Celery's banner: read once here (`uname -p`), cached after


def _work(settings: Settings, *, migrate: bool, echo: Callable[[str], None]) -> None:
    """Be one worker process, until it is stopped (exits with the worker's status)."""
    load_worker()
    from worker.adapters.ledger.database import open_kept_connections  # noqa: PLC0415
    from worker.app import build_worker, declare_topology  # noqa: PLC0415
    from worker.ops.observability import configure_logging, init_sentry  # noqa: PLC0415
    from worker.transport.plain_consumer import refuse_decompression  # noqa: PLC0415

    configure_logging(settings)
    init_sentry(settings)
    if migrate:
        _migrate(settings, echo)
    app, runtime = build_worker(settings)
    services = runtime.services()  # fail now, not on the first command, if a setting is unusable
    open_kept_connections(services.ledger.engine)
    declare_topology(app)
    refuse_decompression()  # no message is ever inflated in a worker process
    # A thread whose reply has arrived waits for the interpreter lock: at the default 5 ms
    # handoff a debit's ~20 round trips add ~100 ms at the median. 1 ms costs a little CPU.
    sys.setswitchinterval(0.001)
    sys.exit(_celery_worker(app, settings))


def _celery_worker(app: Celery, settings: Settings) -> int:
    """What `celery worker --pool=threads --queues=… --without-gossip --without-mingle` does
    (its threads all started at once), without loading Celery's command line (its every
    subcommand and their libraries: about half a second of each worker process's start)."""
    from celery.platforms import maybe_drop_privileges  # noqa: PLC0415
    from celery.utils.nodenames import default_nodename, host_format  # noqa: PLC0415

    from worker.transport.thread_pool import StartedThreadPool  # noqa: PLC0415
    from worker.transport.topology import TASK_QUEUE  # noqa: PLC0415

    maybe_drop_privileges(uid=None, gid=None)  # refuses, or warns about, running as root
    worker = app.Worker(
        # One node name per process: two workers on one host would otherwise share
        # `celery@host` and the second dies on its remote-control (pidbox) queue.
        hostname=host_format(default_nodename(f"debit-worker.{os.getpid()}@%h")),
        pool_cls=StartedThreadPool,
        concurrency=settings.concurrency,
        queues=[TASK_QUEUE],
        loglevel=settings.log_level,
        without_gossip=True,
        without_mingle=True,
        no_color=False,
        quiet=False,
    )
    worker.start()
    return int(worker.exitcode or 0)
