"""The Celery application: delivery guarantees first, throughput second.

- acks late + reject on worker lost: a task whose process dies goes back to the queue;
- prefetch 1 per worker thread; JSON only (pickle is never accepted);
- publisher confirms on every publish;
- quorum queues on topic exchanges (Celery's native delayed delivery needs topic for
  countdown retries on quorum queues).
"""

from __future__ import annotations

import ssl
from typing import Any

from celery import Celery

from worker.settings import Settings
from worker.transport.topology import TASK_EXCHANGE, TASK_QUEUE, TASK_ROUTING_KEY, task_queue


def create_app(settings: Settings) -> Celery:
    app = Celery("debit_worker", set_as_current=False)
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options={
            "confirm_publish": True,
            # Only the embedded (memory) transport polls; keep the demo snappy.
            "polling_interval": 0.05,
        },
        broker_connection_retry_on_startup=True,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        task_ignore_result=True,
        result_backend=None,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # A task that fails unhandled is rejected (to the dead-letter exchange), never acked
        # and forgotten.
        task_acks_on_failure_or_timeout=False,
        worker_prefetch_multiplier=1,
        task_queues=[task_queue],
        task_default_queue=TASK_QUEUE,
        task_default_exchange=TASK_EXCHANGE,
        task_default_exchange_type="topic",
        task_default_routing_key=TASK_ROUTING_KEY,
        task_create_missing_queues=False,
        task_publish_retry=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=False,
        worker_cancel_long_running_tasks_on_connection_loss=False,
        enable_utc=True,
        broker_use_ssl=broker_tls(settings),
    )
    return app


def broker_tls(settings: Settings) -> dict[str, Any] | None:
    """With an amqps:// URL: TLS, the server's certificate verified against
    DEBIT_WORKER_BROKER_CA_FILE (or the system's CAs) and its host name checked."""
    if not settings.broker_url.startswith("amqps://"):
        return None
    options: dict[str, Any] = {"cert_reqs": ssl.CERT_REQUIRED}
    if settings.broker_ca_file is not None:
        options["ca_certs"] = str(settings.broker_ca_file)
    return options
