"""Reads the platform's own Stripe account when a worker process starts.

Every debit's rules need the platform's country: read lazily, it would put a third Stripe round
trip in front of the first debits of every process. Read in the background as the process
starts consuming, it is usually cached before the first command arrives (a debit that comes
sooner waits for this same read). The log also says at once whether Stripe accepts the key.
It never stops the worker: if the read fails, the first debit reads the platform again.
The read takes a background token of the rate budget: at full load, the debits that other
processes are making go first. Then the thread opens the rest of the Stripe HTTP pool's
connections (no request is sent), so that their count does not creep up with the load.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from celery import bootsteps

from worker.adapters.rate_budget import in_background
from worker.bootstrap import runtime_of
from worker.domain.errors import DebitWorkerError, OperatorActionNeeded
from worker.domain.ports import StripePort
from worker.handlers import Services

log = logging.getLogger(__name__)


class StripeWarmUp(bootsteps.StartStopStep):
    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self._app = parent.app

    def start(self, parent: Any) -> None:  # noqa: ARG002 - bootstep signature
        services = runtime_of(self._app).services()
        threading.Thread(
            target=warm_up, args=(services,), name="stripe-warm-up", daemon=True
        ).start()


def warm_up(services: Services) -> None:
    read_platform(services.stripe)
    if services.open_stripe_connections is not None:
        log.info("%d Stripe connections open", services.open_stripe_connections())


def read_platform(stripe: StripePort) -> None:
    """Read (and so cache) the platform's facts, saying in the log how that went."""
    try:
        with in_background():
            platform = stripe.platform()
    except OperatorActionNeeded as refused:
        _refused(refused)
    except DebitWorkerError as failed:
        log.warning(
            "could not read the platform's Stripe account at start (%s); the first debit "
            "reads it again",
            failed,
        )
    else:
        log.info("Stripe platform %s, country %s", platform.account_id, platform.country)


def _refused(refused: OperatorActionNeeded) -> None:
    # An error without a traceback: the cause is the key, not this code.
    log.error(
        "Stripe refused the configured API key at start (%s): every debit will be retried "
        "and then escalated until the key or its permissions are fixed",
        refused,
    )
