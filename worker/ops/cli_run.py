"""`debit-worker run`: check, migrate, declare, then become the worker (or its supervisor).

With several processes, this process only checks the settings and migrates (when the ledger is
not already at the newest schema) before it becomes the supervisor: each worker process builds
its own services and declares the topology as it starts, so doing either here first would
only delay them (start-up is mostly imports; see bench/startup.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

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
    from worker.ops.supervisor import exec_supervisor  # noqa: PLC0415

    if migrate and known_at_head(settings.database_url):
        echo(f"ledger schema at revision {newest_revision()}")
    elif migrate:
        _migrate(settings, echo)
    sys.stdout.flush()
    exec_supervisor(settings, settings.processes)


def _work(settings: Settings, *, migrate: bool, echo: Callable[[str], None]) -> None:
    """Be one worker process, until it is stopped (exits with the worker's status)."""
    from worker.app import build_worker, declare_topology  # noqa: PLC0415
    from worker.ops.observability import configure_logging, init_sentry  # noqa: PLC0415
    from worker.transport.plain_consumer import refuse_decompression  # noqa: PLC0415

    configure_logging(settings)
    init_sentry(settings)
    if migrate:
        _migrate(settings, echo)
    app, runtime = build_worker(settings)
    runtime.services()  # fail now, not on the first command, if a setting is unusable
    declare_topology(app)
    refuse_decompression()  # no message is ever inflated in a worker process
    # A thread whose reply has arrived waits for the interpreter lock: at the default 5 ms
    # handoff a debit's ~20 round trips add ~100 ms at the median. 1 ms costs a little CPU.
    sys.setswitchinterval(0.001)
    sys.exit(_celery_worker(app, settings))


def _celery_worker(app: Celery, settings: Settings) -> int:
    """What `celery worker --pool=threads --queues=… --without-gossip --without-mingle` does,
    without loading Celery's command line (its every subcommand and their libraries: about
    half a second of each worker process's start)."""
    from celery.platforms import maybe_drop_privileges  # noqa: PLC0415
    from celery.utils.nodenames import default_nodename, host_format  # noqa: PLC0415

    from worker.transport.topology import TASK_QUEUE  # noqa: PLC0415

    maybe_drop_privileges(uid=None, gid=None)  # refuses, or warns about, running as root
    worker = app.Worker(
        # One node name per process: two workers on one host would otherwise share
        # `celery@host` and the second dies on its remote-control (pidbox) queue.
        hostname=host_format(default_nodename(f"debit-worker.{os.getpid()}@%h")),
        pool_cls="threads",
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
