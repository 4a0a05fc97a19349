"""The naive baseline: what a first Celery worker for account debits looks like.

Default Celery settings (prefork, one process per core, early acks), and before every debit
an account read and a balance read, then the charge. No ledger, no outbox, no budget. Each
finished debit publishes `{"subject": request_id}` so latency is measured like ours.
Also a bare no-op task: the ceiling of Celery itself on this machine.

Started by the benchmark as `celery -A bench.naive worker …`; configured by environment.
"""

from __future__ import annotations

import json
import os
from functools import cache

import stripe
from celery import Celery
from kombu import Exchange, Queue

NAIVE_QUEUE = "bench.naive"
NOOP_QUEUE = "bench.noop"
EVENTS_QUEUE = "bench.naive.events"

app = Celery("bench_naive", broker=os.environ.get("BENCH_BROKER_URL", "memory://"))
app.conf.update(
    task_ignore_result=True,
    task_queues=[Queue(NAIVE_QUEUE), Queue(NOOP_QUEUE), Queue(EVENTS_QUEUE)],
    worker_hijack_root_logger=False,
)


@cache
def _stripe() -> stripe.StripeClient:
    return stripe.StripeClient(
        os.environ["BENCH_STRIPE_KEY"],
        base_addresses={"api": os.environ["BENCH_STRIPE_BASE"]},
    )


@app.task(name="bench.naive.debit")
def debit(request_id: str, account: str, amount: int, currency: str) -> None:
    client = _stripe()
    client.v1.accounts.retrieve(account)
    client.v1.balance.retrieve(options={"stripe_account": account})
    client.v1.charges.create(
        params={"amount": amount, "currency": currency, "source": account},
        options={"idempotency_key": request_id},
    )
    with app.producer_or_acquire() as producer:
        producer.publish(
            json.dumps({"subject": request_id}),
            exchange=Exchange(""),
            routing_key=EVENTS_QUEUE,
        )


@app.task(name="bench.noop")
def noop() -> None:
    return None
