"""Builds the worker's dependencies from settings. Nothing happens at import time; tests
hand in fakes for any piece."""

from __future__ import annotations

import os
import socket
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime

import stripe
from celery import Celery

from worker.adapters.facts_cache import CachedStripe
from worker.adapters.ledger import Ledger, utc_now
from worker.adapters.ledger.database import make_engine
from worker.adapters.rate_budget import LocalRateBudget, RateBudget
from worker.adapters.stripe_gateway import StripeGateway
from worker.adapters.stripe_http import Urllib3Client
from worker.domain.ports import EventPublisher, Outbound, StripePort, StripeRecords
from worker.domain.rule_tables import RuleTables
from worker.handlers import HandlerConfig, Services
from worker.settings import Settings
from worker.transport.authentication import Authenticator
from worker.transport.event_pump import EventPump, connect_for_events
from worker.transport.publisher import DeadLetters, KombuEventPublisher, PublishingOutbound
from worker.transport.topology import is_embedded


def stripe_client(
    settings: Settings, http_client: Urllib3Client | None = None
) -> stripe.StripeClient:
    base = {"api": stripe_api_base(settings)} if settings.stripe_api_base else None
    return stripe.StripeClient(
        settings.require_stripe_key().get_secret_value(),
        base_addresses=base,  # type: ignore[arg-type]
        max_network_retries=settings.stripe_max_network_retries,
        http_client=http_client or stripe_http_client(settings),
    )


def stripe_api_base(settings: Settings) -> str | None:
    return str(settings.stripe_api_base).rstrip("/") if settings.stripe_api_base else None


def stripe_http_client(settings: Settings) -> Urllib3Client:
    # A connection for every thread that may call Stripe, so that none opens one of its own
    # beyond those the pool keeps.
    return Urllib3Client(
        timeout=settings.stripe_timeout_seconds,
        pool_size=settings.concurrency + BACKGROUND_THREADS,
        api_base=stripe_api_base(settings),
    )


def rate_budget(settings: Settings) -> RateBudget:
    """Shared through Redis when configured, else this process's own: Stripe's global limit
    and each endpoint class's."""
    rate = settings.effective_stripe_rate
    limits = settings.effective_endpoint_limits
    burst_seconds = settings.stripe_rate_burst_seconds
    if settings.rate_budget_redis_url is None:
        return LocalRateBudget(rate, limits, burst_seconds=burst_seconds)
    # Imported only here: without a Redis URL a worker never loads redis (a tenth of a second).
    from worker.adapters.redis_budget import RedisRateBudget, budget_key  # noqa: PLC0415

    key = budget_key(settings.require_stripe_key().get_secret_value())
    return RedisRateBudget.from_url(
        settings.rate_budget_redis_url.get_secret_value(),
        key,
        rate,
        limits,
        burst_seconds=burst_seconds,
        processes=settings.rate_budget_processes,
    )


def authenticator(settings: Settings) -> Authenticator:
    return Authenticator(
        keys={
            producer: {key_id: secret.get_secret_value() for key_id, secret in keys.items()}
            for producer, keys in settings.producer_keys.items()
        },
        policies=dict(settings.producers),
        require_signatures=settings.require_signatures,
        max_age_seconds=settings.signature_max_age_seconds,
    )


# A worker process's threads besides its `concurrency` worker threads: the outbox relay,
# the janitor, the lease keeper, the reconciler, the dead-letter keeper, the retention and
# the event pump use the ledger; the Stripe warm-up reads Stripe only, and is counted anyway
# so that giving it a ledger read could not starve a worker thread.
BACKGROUND_THREADS = 8


def build_services(
    settings: Settings,
    app: Celery,
    *,
    stripe_port: StripePort | None = None,
    records_port: StripeRecords | None = None,
    publisher: EventPublisher | None = None,
    clock: Callable[[], datetime] = utc_now,
) -> Services:
    # At most one connection for every thread that may use the ledger (each holds at most
    # one), so none waits for a free one. The ledger's work is bounded by Stripe's rate (a few
    # short statements a debit), so a few connections carry it: `database_pool_size` are
    # kept open (closing and reopening costs PostgreSQL a new backend; `run` opens them as it
    # starts), a burst's extra ones are closed once returned, so the count PostgreSQL sees
    # stays at the pool size instead of creeping up with each new peak. No pre-ping (a round
    # trip per checkout): a connection that died with its server fails its first statement,
    # SQLAlchemy discards the pool, and the task retries as on any outage.
    connections = settings.concurrency + BACKGROUND_THREADS
    engine = make_engine(
        settings.database_url,
        pool_size=min(settings.database_pool_size, connections),
        max_connections=connections,
        pre_ping=False,
        statement_timeout_ms=settings.database_statement_timeout_ms,
        lock_timeout_ms=settings.database_lock_timeout_ms,
    )
    ledger = Ledger.on(engine, clock)
    open_stripe_connections = None
    if stripe_port is None:  # one gateway (one rate budget) for debits and reconciliation
        http_client = stripe_http_client(settings)
        open_stripe_connections = http_client.open_connections
        gateway = StripeGateway(stripe_client(settings, http_client), rate_budget(settings))
        stripe_port = CachedStripe(
            gateway,
            ttl_seconds=settings.account_cache_ttl_seconds,
            platform_country=settings.platform_country,
        )
        records_port = records_port or gateway
    return Services(
        ledger=ledger,
        stripe=stripe_port,
        records=records_port,
        outbound=outbound(settings, app, ledger, publisher),
        rules=RuleTables.from_file(settings.rules_file) if settings.rules_file else RuleTables(),
        config=HandlerConfig(
            consent_required=settings.consent_required,
            balance_precheck=settings.balance_precheck,
            lease_seconds=settings.claim_lease_seconds,
            key_escalation_after_seconds=settings.key_escalation_after_seconds,
            event_source=settings.event_source,
        ),
        clock=clock,
        auth=authenticator(settings),
        open_stripe_connections=open_stripe_connections,
    )


def outbound(
    settings: Settings, app: Celery, ledger: Ledger, publisher: EventPublisher | None = None
) -> Outbound:
    """The event pump on RabbitMQ; on the embedded broker, or through an injected publisher
    (tests), each event is published on the worker thread."""
    if publisher is None and not is_embedded(settings.broker_url):
        return EventPump(connect_for_events(app), ledger.outbox.mark_sent_many)
    return PublishingOutbound(publisher or KombuEventPublisher(app), ledger.outbox.mark_sent_many)


@dataclass
class Runtime:
    """One per worker process: builds the services on first use (after any fork)."""

    settings: Settings
    app: Celery
    factory: Callable[[Settings, Celery], Services] = build_services
    _services: Services | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)

    def services(self) -> Services:
        with self._lock:
            if self._services is None:
                self._services = self.factory(self.settings, self.app)
            return self._services

    @property
    def identity(self) -> str:
        """host:pid, named in leases and audit entries; DEBIT_WORKER_HOST_NAME tells apart
        deployments that share a machine's host name (containers, the benchmark)."""
        return f"{self.settings.host_name or socket.gethostname()}:{os.getpid()}"

    @property
    def dead_letters(self) -> DeadLetters:
        return DeadLetters(self.app)

    @property
    def event_publisher(self) -> EventPublisher:
        """The outbox relay's: each event confirmed before the next."""
        return KombuEventPublisher(self.app)


_RUNTIME_ATTRIBUTE = "debit_worker_runtime"


def attach(app: Celery, runtime: Runtime) -> None:
    """Bootsteps are built by Celery from the app alone; they find the runtime here."""
    setattr(app, _RUNTIME_ATTRIBUTE, runtime)


def runtime_of(app: Celery) -> Runtime:
    runtime = getattr(app, _RUNTIME_ATTRIBUTE, None)
    if not isinstance(runtime, Runtime):
        raise TypeError("no Runtime attached to this Celery app; build it with worker.app")
    return runtime
