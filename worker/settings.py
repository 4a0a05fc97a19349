"""Every setting the worker reads, in one validated object, built by :func:`load_settings`.

Read from the environment (prefix ``DEBIT_WORKER_``) or a ``.env`` file. Secrets may instead
come from files: ``DEBIT_WORKER_SECRETS_DIR`` names a directory holding one file per secret,
named like the environment variable in any case (``debit_worker_stripe_api_key``), as
container secrets are mounted; JSON-valued settings (``producer_keys``) hold JSON there too.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal
from urllib.parse import unquote, urlsplit

from pydantic import AnyUrl, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from schemas.signing import valid_id
from worker.adapters.rate_budget import DEFAULT_ENDPOINT_RATE, ENDPOINT_CLASSES
from worker.domain.producer_limits import ProducerPolicy

DEFAULT_BROKER_URL = "amqp://guest:guest@127.0.0.1:5672//"
DEFAULT_DATABASE_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/debit_worker"
# Stripe's documented per-account limits: sandbox (test mode) 25 requests/s, live 100.
TEST_MODE_RATE = 25.0
LIVE_MODE_RATE = 100.0
# The only address a live key is ever sent to (as pydantic normalises it).
STRIPE_API_BASE = "https://api.stripe.com/"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="DEBIT_WORKER_",
        env_file=".env",
        extra="ignore",
        frozen=True,
    )

    broker_url: str = Field(
        default=DEFAULT_BROKER_URL, description="AMQP URL of RabbitMQ ('memory://' embeds one)."
    )
    database_url: str = Field(
        default=DEFAULT_DATABASE_URL, description="SQLAlchemy URL of the ledger database."
    )
    database_statement_timeout_ms: int = Field(
        default=30_000,
        ge=0,
        le=3_600_000,
        description="PostgreSQL statement_timeout of the worker's ledger connections: a "
        "statement running longer is cancelled and the attempt retried (0: no limit).",
    )
    database_lock_timeout_ms: int = Field(
        default=5_000,
        ge=0,
        le=3_600_000,
        description="PostgreSQL lock_timeout of the worker's ledger connections: a statement "
        "waiting longer for a lock fails and the attempt is retried (0: no limit).",
    )
    database_pool_size: int = Field(
        default=16,
        ge=1,
        le=1024,
        description="Ledger connections each worker process opens as it starts and keeps; in a "
        "burst it opens more, up to CONCURRENCY + 8, and closes those once used.",
    )
    stripe_api_key: SecretStr | None = Field(
        default=None,
        description="Stripe secret (sk_…) or restricted (rk_…) key; required to run the worker.",
    )
    stripe_api_base: AnyUrl | None = Field(
        default=None, description="Override Stripe's API address (the local sandbox in tests)."
    )
    stripe_timeout_seconds: float = Field(default=20.0, gt=0, le=120)
    stripe_max_network_retries: int = Field(
        default=2, ge=0, le=10, description="In-call retries by the SDK, with the same key."
    )
    stripe_rate_limit: float | None = Field(
        default=None,
        gt=0,
        description="Stripe's global limit: requests per second for this platform, all "
        "endpoints together; default from the key's mode (test 25, live 100).",
    )
    stripe_rate_burst_seconds: float = Field(
        default=0.5,
        gt=0,
        le=1,
        description="How much of one second's budget may be spent at once after a quiet "
        "spell (burst = rate x this). Stripe's limiter allows a second's worth; half keeps a "
        "margin while absorbing the pipeline's jitter near full rate (at a tenth, requests "
        "queued for the budget at 97% load).",
    )
    stripe_endpoint_limits: dict[str, float] = Field(
        default_factory=dict,
        description="JSON: endpoint class → requests per second Stripe allows on it, for "
        "the classes whose limit Stripe raised (or lowered); every other class gets Stripe's "
        "default per-endpoint limit, 25. Classes: " + ", ".join(ENDPOINT_CLASSES) + ".",
    )
    rate_budget_redis_url: SecretStr | None = Field(
        default=None,
        description="Redis URL (redis://host:6379/0) of the rate budget shared by every "
        "worker process and host; unset, each process keeps its own.",
    )
    rate_budget_processes: int = Field(
        default=1,
        ge=1,
        le=1000,
        description="Worker processes sharing the Redis budget: while Redis is unreachable "
        "each allows itself the rate divided by this.",
    )
    platform_country: str | None = Field(
        default=None,
        pattern=r"^[A-Z]{2}$",
        description="The platform's country; read once from GET /v1/account when unset.",
    )
    account_cache_ttl_seconds: float = Field(default=300.0, ge=0, le=86_400)
    consent_required: bool = Field(
        default=True, description="Refuse debits without a recorded consent (consent_missing)."
    )
    balance_precheck: bool = Field(
        default=False, description="Read the balance before each debit (costs a Stripe read)."
    )
    rules_file: Path | None = Field(
        default=None, description="YAML/JSON file overriding regions, corridors and caps."
    )
    event_source: str = Field(default="urn:debit-worker", min_length=1)
    sentry_dsn: SecretStr | None = None
    sentry_environment: str = "production"
    concurrency: int = Field(
        default=64, ge=1, le=1024, description="Worker threads (in each worker process)."
    )
    processes: int = Field(
        default=1,
        ge=1,
        le=64,
        description="Worker processes `run` starts on this host, each with `concurrency` "
        "threads; one process uses about one core.",
    )
    host_name: str | None = Field(
        default=None,
        max_length=100,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="The host part of each worker process's identity (host:pid), which names "
        "it in leases and audit entries; unset, the machine's host name. Set it when "
        "several deployments share one machine's host name.",
    )
    max_attempts: int = Field(
        default=12,
        ge=1,
        le=100,
        description="Attempts before an unresolved debit is escalated to needs_reconciliation.",
    )
    retry_base_seconds: float = Field(default=1.0, gt=0)
    retry_max_seconds: float = Field(default=600.0, gt=0)
    claim_lease_seconds: float = Field(
        default=9.0,
        gt=0,
        description="How long a claim holds a request: renewed every third of it while the "
        "debit is in progress, so a dead worker's requests are free this long after its last "
        "renewal (plus a janitor interval to be resumed).",
    )
    relay_interval_seconds: float = Field(default=5.0, gt=0)
    key_escalation_after_seconds: float = Field(
        default=20 * 3600.0,
        gt=0,
        lt=24 * 3600.0,
        description="Age of a request's first Stripe attempt after which it is no longer "
        "retried but escalated (needs_reconciliation): Stripe keeps keys only 24 h.",
    )
    janitor_interval_seconds: float = Field(
        default=3.0,
        gt=0,
        description="How often each worker process looks for abandoned claims (and at start).",
    )
    dead_letter_keep_interval_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How often each worker process moves what reached the dead-letter queue "
        "into the ledger, where `dlq list` reads it.",
    )
    outbox_retention_seconds: float = Field(
        default=7 * 86_400.0,
        ge=0,
        description="How long a sent event stays in the outbox (and a producer's daily "
        "reservation past its day) before the retention removes it; 0: keep forever.",
    )
    retention_interval_seconds: float = Field(
        default=600.0,
        gt=0,
        description="How often a worker process runs the retention (one process of all "
        "hosts at a time).",
    )
    janitor_stale_after_seconds: float = Field(
        default=900.0,
        gt=0,
        description="A request with no lease, untouched this long, is re-enqueued by the "
        "janitor (longer than the longest retry delay).",
    )
    reconcile_interval_seconds: float = Field(
        default=300.0,
        ge=0,
        description="How often each worker process settles requests whose Stripe outcome is "
        "unknown (needs_reconciliation) from Stripe's own records; 0: never (only "
        "`debit-worker reconcile`).",
    )
    reconcile_grace_seconds: float = Field(
        default=3600.0,
        ge=0,
        description="How long after a request's last Stripe attempt a charge may still "
        "appear (Stripe carrying out a 500 late): only after it does an empty lookup settle "
        "the request as not_executed.",
    )
    daily_proof: bool = Field(
        default=True,
        description="Prove the day before against Stripe once a day (false: only `debit-worker "
        "reconcile --day`).",
    )
    daily_proof_hour: int = Field(
        default=2,
        ge=0,
        le=23,
        description="UTC hour from which the day before is proved, once, by whichever worker "
        "process claims the day first.",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    metrics_port: int = Field(
        default=9464,
        ge=0,
        le=65535,
        description="HTTP port of /metrics (Prometheus), /livez and /readyz, served by `run` "
        "(by the supervisor with --processes N); 0: none.",
    )
    metrics_host: str = Field(
        # Prometheus and the container's probes reach it from outside the container.
        default="0.0.0.0",  # noqa: S104  # nosec B104
        min_length=1,
        description="Address the metrics and health endpoint listens on.",
    )
    log_format: Literal["text", "json"] = Field(
        default="text",
        description="text: `time LEVEL logger: message` lines; json: one JSON object per "
        "line, with the request's fields (request_id, producer, attempt, outcome, code).",
    )
    broker_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify RabbitMQ's certificate with an amqps:// broker URL "
        "(unset: the system's CAs).",
    )
    # --- producers: who may ask for debits (the worker's side) ---
    require_signatures: bool = Field(
        default=True,
        description="Refuse commands without a valid producer signature. false lets any "
        "client of the broker ask for debits; refused with a live key unless "
        "allow_unsigned_live_mode is set too.",
    )
    allow_unsigned_live_mode: bool = Field(
        default=False,
        description="DANGEROUS: let a worker with a live key run with require_signatures "
        "false, so that anyone who can publish to the broker can move real money.",
    )
    signature_max_age_seconds: float = Field(
        default=300.0,
        gt=0,
        le=86_400,
        description="How far a signature's timestamp may be from the moment the worker "
        "received the command, either way.",
    )
    producer_keys: dict[str, dict[str, SecretStr]] = Field(
        default_factory=dict,
        description="JSON: producer id → key id → secret, every key that may sign now "
        "(several per producer while rotating).",
    )
    producers: dict[str, ProducerPolicy] = Field(
        default_factory=dict,
        description="JSON: producer id → policy (allowed_reasons, max_per_debit, max_per_day, "
        "retired_keys, may_replay).",
    )
    # --- signing (the CLI's and DebitProducer's side) ---
    producer_id: str | None = Field(default=None, description="Who `request` signs as.")
    producer_key_id: str | None = Field(default=None, description="Which key `request` uses.")
    producer_secret: SecretStr | None = Field(default=None, description="That key's secret.")

    @field_validator(
        "sentry_dsn", "stripe_api_key", "producer_secret", "rate_budget_redis_url", mode="before"
    )
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        return None if value == "" else value

    @field_validator("stripe_api_key")
    @classmethod
    def _key_shape(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None and not value.get_secret_value().startswith(("sk_", "rk_")):
            raise ValueError("must be a Stripe secret key (sk_…) or restricted key (rk_…)")
        return value

    @field_validator("producer_keys", "producers", "producer_id", "producer_key_id")
    @classmethod
    def _ids_shape(cls, value: object) -> object:
        """Ids go into the signed text line by line: one with a line feed would blur it."""
        ids: list[str] = []
        if isinstance(value, str):
            ids.append(value)
        elif isinstance(value, dict):
            ids.extend(value)
            for inner in value.values():
                if isinstance(inner, dict):
                    ids.extend(inner)
        bad = [name for name in ids if not valid_id(name)]
        if bad:
            raise ValueError(f"ids must be 1-64 of A-Z a-z 0-9 . _ - (not {bad[0]!r})")
        return value

    @field_validator("stripe_endpoint_limits")
    @classmethod
    def _known_classes(cls, value: dict[str, float]) -> dict[str, float]:
        for name, rate in value.items():
            if name not in ENDPOINT_CLASSES:
                raise ValueError(
                    f"{name!r} is not an endpoint class: use "
                    f"{', '.join(ENDPOINT_CLASSES)} (see docs/operations.md, Stripe's rate limits)"
                )
            if not rate > 0:
                raise ValueError(f"the limit of {name} must be a positive number of requests/s")
        return value

    def require_stripe_key(self) -> SecretStr:
        if self.stripe_api_key is None:
            raise SettingsError(
                "DEBIT_WORKER_STRIPE_API_KEY is not set: the worker needs the platform's Stripe "
                "secret key (sk_…) or a restricted key (rk_…) to debit accounts"
            )
        return self.stripe_api_key

    def require_safe_to_run(self) -> SecretStr:
        """What every way of starting the worker checks first: a Stripe key, and no setting
        that would let a live key move money outside policy. Returns the key."""
        key = self.require_stripe_key()
        if not self.live_mode:
            return key
        base = self.stripe_api_base
        if base is not None and str(base) != STRIPE_API_BASE:
            parts = urlsplit(str(base))  # shown without any credentials it may carry
            shown = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
            raise SettingsError(
                f"DEBIT_WORKER_STRIPE_API_BASE is {shown} but the Stripe "
                "key is a live key, which is only ever sent to https://api.stripe.com: unset "
                "DEBIT_WORKER_STRIPE_API_BASE, or use a test key (sk_test_…) with the sandbox"
            )
        if not self.require_signatures and not self.allow_unsigned_live_mode:
            raise SettingsError(
                "DEBIT_WORKER_REQUIRE_SIGNATURES=false with a live Stripe key would let anyone "
                "who can publish to the broker move real money: set "
                "DEBIT_WORKER_REQUIRE_SIGNATURES=true, or, only while producers migrate and "
                "knowing the risk, DEBIT_WORKER_ALLOW_UNSIGNED_LIVE_MODE=true"
            )
        return key

    def secrets(self) -> tuple[str, ...]:
        """Every configured secret value, for scrubbing (passwords in URLs included)."""
        redis = self.rate_budget_redis_url
        values = [self.stripe_api_key, self.sentry_dsn, self.producer_secret, redis]
        values += [secret for keys in self.producer_keys.values() for secret in keys.values()]
        found = [value.get_secret_value() for value in values if value is not None]
        for url in (self.broker_url, self.database_url, redis.get_secret_value() if redis else ""):
            password = urlsplit(url).password
            if password:
                # As written in the URL, and decoded as the client sends it (and may echo it).
                found += [password, unquote(password)]
        return tuple(dict.fromkeys(secret for secret in found if secret))

    @property
    def live_mode(self) -> bool:
        return "_live_" in self.require_stripe_key().get_secret_value()

    @property
    def effective_stripe_rate(self) -> float:
        if self.stripe_rate_limit is not None:
            return self.stripe_rate_limit
        return LIVE_MODE_RATE if self.live_mode else TEST_MODE_RATE

    @property
    def effective_endpoint_limits(self) -> dict[str, float]:
        """Requests per second of every endpoint class: as set, else Stripe's default."""
        given = self.stripe_endpoint_limits
        return {name: given.get(name, DEFAULT_ENDPOINT_RATE) for name in ENDPOINT_CLASSES}


# pydantic-settings names the field it could not parse: error parsing value for field "x" …
_SOURCE_FIELD = re.compile(r'field "([a-z_]+)"')


class SettingsError(Exception):
    """Configuration is missing or invalid; the message says which setting and how to fix it."""


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment; `overrides` win (used by the CLI and tests)."""
    secrets_dir = os.environ.get("DEBIT_WORKER_SECRETS_DIR")
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(part) for part in err["loc"])
            problems.append(f"DEBIT_WORKER_{name.upper()}: {err['msg']}")
        raise SettingsError(f"invalid configuration: {'; '.join(problems)}") from None
    except SourceError as exc:
        raise SettingsError(_unreadable(exc)) from None


def _unreadable(exc: SourceError) -> str:
    """A value that could not even be parsed (bad JSON), named without its content, which
    may be a secret."""
    field = _SOURCE_FIELD.search(str(exc))
    if field is None:  # not a value: e.g. DEBIT_WORKER_SECRETS_DIR is not a directory
        return f"invalid configuration: {exc}"
    cause = exc.__cause__
    why = f" ({cause})" if isinstance(cause, ValueError) else ""
    return (
        f"invalid configuration: DEBIT_WORKER_{field.group(1).upper()} is not valid JSON{why}; "
        "fix it in the environment, .env or the secrets directory"
    )
