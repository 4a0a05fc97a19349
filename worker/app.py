"""Assembles a runnable worker: the Celery app, its task, the intake, and the background
jobs of a full worker (outbox relay, janitor, retention, the platform read at start, the
metrics and health endpoint)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

from worker.bootstrap import Runtime, attach, build_services
from worker.celery_app import create_app
from worker.handlers import Services
from worker.ops import metrics
from worker.ops.dead_letter_keeper import DeadLetterKeeperStep
from worker.ops.janitor import JanitorStep
from worker.ops.lease_keeper import LeaseKeeperStep
from worker.ops.probe_step import ProbeStep
from worker.ops.reconcile_schedule import ReconcileStep
from worker.ops.retention import RetentionStep
from worker.ops.warm_up import StripeWarmUp
from worker.settings import Settings
from worker.transport.intake import CommandIntake
from worker.transport.relay import RelayStep
from worker.transport.tasks import register_tasks
from worker.transport.topology import declare_all, is_embedded

log = logging.getLogger(__name__)

# Logged at every start while it is true, so that it is not forgotten on.
UNSIGNED_MODE_WARNING = (
    "signatures are not required (DEBIT_WORKER_REQUIRE_SIGNATURES=false): any client of the "
    "broker can move money; set it to true as soon as every producer signs its commands"
)

# kombu retries without end when max_retries is None (its type hints say int).
_FOREVER: dict[str, Any] = {"max_retries": None}


def build_worker(
    settings: Settings,
    *,
    services: Callable[[Settings, Celery], Services] = build_services,
    relay: bool = True,
) -> tuple[Celery, Runtime]:
    settings.require_safe_to_run()
    if not settings.require_signatures:
        log.error(UNSIGNED_MODE_WARNING)
    app = create_app(settings)
    runtime = Runtime(settings, app, factory=services)
    attach(app, runtime)
    register_tasks(app, runtime)
    app.steps["consumer"].add(CommandIntake)
    if relay:
        app.steps["worker"].add(RelayStep)
        app.steps["worker"].add(JanitorStep)
        app.steps["worker"].add(LeaseKeeperStep)
        app.steps["worker"].add(DeadLetterKeeperStep)
        if settings.reconcile_interval_seconds > 0 or settings.daily_proof:
            app.steps["worker"].add(ReconcileStep)
        if settings.outbox_retention_seconds > 0:
            app.steps["worker"].add(RetentionStep)
        app.steps["worker"].add(StripeWarmUp)
        # Not on the embedded broker: the demo and tests run in-process, many at once.
        if settings.metrics_port and not is_embedded(settings.broker_url):
            app.steps["worker"].add(ProbeStep)
    if settings.platform_country:  # no platform read at start: nothing for Stripe to refuse
        metrics.stripe_key_accepted(True)
    return app, runtime


def declare_topology(app: Celery) -> None:
    """Declare every exchange and queue, waiting for the broker if it is not up yet: a worker
    (re)started during a broker outage waits for it, as Celery's own consumer does, instead
    of exiting."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(
            errback=_broker_unreachable,
            interval_start=1,
            interval_step=2,
            interval_max=15,
            **_FOREVER,
        )
        declare_all(connection.default_channel)


def _broker_unreachable(exc: Exception, interval: float) -> None:
    log.warning("broker unreachable (%s); trying again in %.0f s", exc, interval)
