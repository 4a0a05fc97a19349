"""Assembles a runnable worker: the Celery app, its task, the intake and the relay."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from worker.bootstrap import Runtime, attach, build_services
from worker.celery_app import create_app
from worker.handlers import Services
from worker.intake import CommandIntake
from worker.janitor import JanitorStep
from worker.relay import RelayStep
from worker.settings import Settings
from worker.tasks import register_tasks
from worker.topology import declare_all


def build_worker(
    settings: Settings,
    *,
    services: Callable[[Settings, Celery], Services] = build_services,
    relay: bool = True,
) -> tuple[Celery, Runtime]:
    settings.require_stripe_key()
    app = create_app(settings)
    runtime = Runtime(settings, app, factory=services)
    attach(app, runtime)
    register_tasks(app, runtime)
    app.steps["consumer"].add(CommandIntake)
    if relay:
        app.steps["worker"].add(RelayStep)
        app.steps["worker"].add(JanitorStep)
    return app, runtime


def declare_topology(app: Celery) -> None:
    with app.connection_for_write() as connection:
        declare_all(connection.default_channel)
