"""Fakes for the handler's ports, in the cosmicpython style: plain objects that remember what
was asked of them, so tests assert on outcomes instead of on calls to mocks.

- :class:`FakeStripe` is a tiny Stripe: accounts, refunds, balances, and payments kept by
  idempotency key (a repeat of a key replays the first payment, as Stripe does). It can be
  scripted to fail the next calls, or to move the money *and then* fail (a lost response).
- :class:`FakePublisher` is the broker: it records what was published, and can be switched
  off. The outbox relay publishes to it directly.
- :class:`FakeOutbound` is the handler's way out to that broker, as the event pump is in
  production: it takes each event without raising, and marks its outbox row sent only once
  the broker took it (at once, or when the test confirms).
- :class:`FakeClock` / :class:`FakeMonotonic` are clocks the test moves by hand.
- :class:`World` is one handler's world, signatures on as in production: `World.handle` and
  `World.delivery` sign each command as the producer :data:`PRODUCER` does.
- :func:`sql_counted` counts the SQL statements and transactions an engine runs.
"""

from __future__ import annotations

import json
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import Connection, Engine, event

from schemas.codes import FailureCode
from schemas.events import StripeErrorInfo
from schemas.signing import Signer
from worker.adapters.ledger import Ledger
from worker.adapters.ledger.database import make_engine
from worker.adapters.ledger.migrate import upgrade
from worker.domain.errors import DebitWorkerError, PermanentFailure
from worker.domain.ports import PublishFailed
from worker.domain.producer_limits import ProducerPolicy
from worker.domain.rule_tables import RuleTables
from worker.domain.types import (
    AccountFacts,
    ChargeSeen,
    DebitCharge,
    KeyedEvent,
    OutboxEvent,
    Payment,
    PlatformFacts,
    RefundFacts,
    idempotency_key,
)
from worker.handlers import HandlerConfig, Result, Services, handle_debit_requested
from worker.transport.attempts import Delivery
from worker.transport.authentication import RECEIVED_AT_HEADER, Authenticator

START = datetime(2026, 11, 15, 12, 0, tzinfo=UTC)
PLATFORM_ID = "acct_1Platform"
ACCOUNT_ID = "acct_1Debtor"
REFUND_ID = "re_1Refunded"
# The producer whose key signs the World's commands.
PRODUCER = Signer("billing", "k1", "billing-secret")


# --- clocks ---------------------------------------------------------------------------------


class FakeClock:
    """A wall clock (aware UTC datetimes) that only moves when told to."""

    def __init__(self, start: datetime = START) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


class FakeMonotonic:
    """A monotonic clock in seconds; `sleep` advances it instead of waiting."""

    def __init__(self, start: float = 1000.0) -> None:
        self.now = start
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds

    def sleep(self, seconds: float) -> None:
        # A real sleep always lets some time pass; without a floor, a wait too small to
        # change the float clock would spin forever.
        self.slept.append(seconds)
        self.now += max(seconds, 1e-9)


# --- Stripe ---------------------------------------------------------------------------------


def an_account(account_id: str = ACCOUNT_ID, **changes: Any) -> AccountFacts:
    """A US Express-like account the platform carries the losses of: debitable in usd."""
    facts = AccountFacts(
        account_id=account_id,
        country="US",
        default_currency="usd",
        type="express",
        losses_payments="application",
    )
    return replace(facts, **changes)


def a_refund(refund_id: str = REFUND_ID, **changes: Any) -> RefundFacts:
    facts = RefundFacts(refund_id=refund_id, amount=5000, currency="usd", status="succeeded")
    return replace(facts, **changes)


def stripe_refusal(code: FailureCode, stripe_code: str) -> PermanentFailure:
    """A PermanentFailure as the gateway raises it when Stripe said no."""
    return PermanentFailure(
        code,
        f"Stripe refused ({stripe_code})",
        stripe_error=StripeErrorInfo(
            type="invalid_request_error", code=stripe_code, request_id="req_fake"
        ),
    )


@dataclass
class _Scripted:
    error: DebitWorkerError
    after_moving_money: bool


@dataclass
class FakeStripe:
    """A StripePort with Stripe's idempotency: one payment per idempotency key."""

    clock: Callable[[], datetime] = field(default_factory=FakeClock)
    platform_facts: PlatformFacts = field(
        default_factory=lambda: PlatformFacts(account_id=PLATFORM_ID, country="US")
    )
    accounts: dict[str, AccountFacts] = field(default_factory=dict)
    refunds: dict[str, RefundFacts] = field(default_factory=dict)
    # (account, currency) → available balance in minor units; absent means "plenty".
    balances: dict[tuple[str, str], int] = field(default_factory=dict)
    # Every create_debit call, and the idempotency key the real gateway would send with it.
    debit_calls: list[DebitCharge] = field(default_factory=list)
    idempotency_keys: list[str] = field(default_factory=list)
    # Payments that exist at "Stripe", by idempotency key.
    payments: dict[str, Payment] = field(default_factory=dict)
    reads: list[tuple[str, str]] = field(default_factory=list)
    # Runs when a balance is read: lets a test slip something in between a debit's policy
    # decision and its begin_attempt (the balance is the last fact the handler reads).
    on_balance_read: Callable[[], None] | None = None
    # Stripe's records: every charge made (or planted), and the Event of each made by a
    # request with an idempotency key.
    charges: dict[str, ChargeSeen] = field(default_factory=dict)
    events: list[KeyedEvent] = field(default_factory=list)
    list_reads: list[tuple[str, datetime, datetime]] = field(default_factory=list)
    _script: deque[_Scripted] = field(default_factory=deque)

    # -- arranging --

    def add_account(self, account: AccountFacts) -> None:
        self.accounts[account.account_id] = account

    def add_refund(self, refund: RefundFacts) -> None:
        self.refunds[refund.refund_id] = refund

    def fail_next(self, error: DebitWorkerError, *, times: int = 1) -> None:
        """The next `times` create_debit calls raise `error` and move no money."""
        self._script.extend(_Scripted(error, after_moving_money=False) for _ in range(times))

    def lose_next_response(self, error: DebitWorkerError) -> None:
        """The next create_debit moves the money, then raises `error` (the answer was lost)."""
        self._script.append(_Scripted(error, after_moving_money=True))

    # -- StripePort --

    def platform(self) -> PlatformFacts:
        self.reads.append(("platform", self.platform_facts.account_id))
        return self.platform_facts

    def account(self, account_id: str) -> AccountFacts:
        self.reads.append(("account", account_id))
        try:
            return self.accounts[account_id]
        except KeyError:
            raise stripe_refusal(FailureCode.ACCOUNT_NOT_FOUND, "resource_missing") from None

    def refund(self, refund_id: str) -> RefundFacts:
        self.reads.append(("refund", refund_id))
        try:
            return self.refunds[refund_id]
        except KeyError:
            raise stripe_refusal(FailureCode.REFUND_NOT_FOUND, "resource_missing") from None

    def available_balance(self, account_id: str, currency: str) -> int:
        self.reads.append(("balance", account_id))
        if self.on_balance_read is not None:
            hook, self.on_balance_read = self.on_balance_read, None
            hook()
        return self.balances.get((account_id, currency), 10**12)

    def create_debit(self, charge: DebitCharge) -> Payment:
        key = idempotency_key(charge.request_id)
        self.debit_calls.append(charge)
        self.idempotency_keys.append(key)
        if self._script:
            step = self._script.popleft()
            if step.after_moving_money:
                self._move_money(charge, key)
            raise step.error
        return self._move_money(charge, key)

    # -- StripeRecords --

    def charge(self, charge_id: str) -> ChargeSeen:
        self.reads.append(("charge", charge_id))
        try:
            return self.charges[charge_id]
        except KeyError:
            raise stripe_refusal(FailureCode.STRIPE_REJECTED, "resource_missing") from None

    def debit_charges(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[ChargeSeen]:
        self.list_reads.append(("charges", created_from, created_until))
        found = [c for c in self.charges.values() if created_from <= c.created < created_until]
        return iter(sorted(found, key=lambda c: c.created, reverse=True))

    def charge_events(
        self, created_from: datetime, created_until: datetime
    ) -> Iterator[KeyedEvent]:
        self.list_reads.append(("events", created_from, created_until))
        found = [e for e in self.events if created_from <= e.created < created_until]
        return iter(sorted(found, key=lambda e: e.created, reverse=True))

    @property
    def list_requests(self) -> int:
        return len(self.list_reads)

    def plant_charge(self, charge: ChargeSeen, key: str | None = None) -> None:
        """A charge at "Stripe" the worker did not make here (and its Event, with `key`)."""
        self.charges[charge.id] = charge
        event_type = f"charge.{charge.status}"
        self.events.append(
            KeyedEvent(f"evt_{charge.id}", event_type, charge.created, key, charge.id)
        )

    # -- inspecting --

    def balance_of(self, account_id: str, currency: str = "usd") -> int:
        return self.balances.get((account_id, currency), 10**12)

    def _move_money(self, charge: DebitCharge, key: str) -> Payment:
        first = self.payments.get(key)
        if first is not None:
            return replace(first, replayed=True)
        balance = self.balance_of(charge.account, charge.currency)
        if balance < charge.amount:
            raise stripe_refusal(FailureCode.INSUFFICIENT_BALANCE, "balance_insufficient")
        self.balances[(charge.account, charge.currency)] = balance - charge.amount
        number = len(self.payments) + 1
        payment = Payment(
            id=f"py_Fake{number}",
            transfer=f"tr_Fake{number}",
            balance_transaction=f"txn_Fake{number}",
            created=self.clock(),
            replayed=False,
        )
        self.payments[key] = payment
        self.plant_charge(
            ChargeSeen(
                id=payment.id,
                status="succeeded",
                paid=True,
                amount=charge.amount,
                currency=charge.currency,
                account=charge.account,
                transfer=payment.transfer,
                balance_transaction=payment.balance_transaction,
                created=payment.created,
                request_id=charge.request_id,
            ),
            key,
        )
        return payment


# --- the broker -----------------------------------------------------------------------------


@dataclass
class FakePublisher:
    """An EventPublisher that records events; `down = True` makes every publish fail."""

    published: list[OutboxEvent] = field(default_factory=list)
    down: bool = False

    def publish(self, event: OutboxEvent) -> None:
        if self.down:
            raise PublishFailed("the fake broker is down")
        self.published.append(event)

    def data(self, index: int = -1) -> dict[str, Any]:
        """The `data` of a published CloudEvent."""
        body: dict[str, Any] = json.loads(self.published[index].body)
        return dict(body["data"])

    @property
    def ids(self) -> list[str]:
        return [event.event_id for event in self.published]


@dataclass
class FakeOutbound:
    """The handler's Outbound, behaving like the event pump: `send` never raises; an event
    the broker does not take (`broker.down`) stays unsent for the relay; a published event's
    row is marked sent when the broker confirms it: at once, or, with `confirm_at_once =
    False`, when the test calls `confirm()`."""

    broker: FakePublisher
    mark_sent_many: Callable[[list[int]], None]
    confirm_at_once: bool = True
    handed_over: list[tuple[int, OutboxEvent]] = field(default_factory=list)
    unconfirmed: list[int] = field(default_factory=list)

    def send(self, row_id: int, event: OutboxEvent) -> None:
        self.handed_over.append((row_id, event))
        try:
            self.broker.publish(event)
        except PublishFailed:
            return  # the pump logs it; the relay sends it later
        self.unconfirmed.append(row_id)
        if self.confirm_at_once:
            self.confirm()

    def confirm(self) -> None:
        """The broker confirms everything published so far: their rows are marked sent."""
        rows, self.unconfirmed = self.unconfirmed, []
        if rows:
            self.mark_sent_many(rows)


# --- the ledger and the whole handler ---------------------------------------------------------


@dataclass
class SqlLog:
    """What one engine was asked while counting: every SQL statement sent to the database,
    every transaction block begun (reads included) and committed, and every statement run as
    its own transaction (no BEGIN or COMMIT sent: `single_statements`)."""

    statements: list[str] = field(default_factory=list)
    begun: int = 0
    committed: int = 0
    single: int = 0

    def __str__(self) -> str:
        return "\n".join(self.statements)


def _in_autocommit(conn: Connection) -> bool:
    """Whether SQLAlchemy runs this connection's statements as their own transactions."""
    return conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT"


@contextmanager
def sql_counted(engine: Engine) -> Iterator[SqlLog]:
    """Count the SQL the engine runs inside the block (pool pings and SQLite pragmas, which
    bypass the cursor events, are not counted). On PostgreSQL the statements are counted
    where psycopg sends them, so those run on psycopg directly (pg_direct.py) count too."""
    if engine.dialect.name == "postgresql":
        with _sent_by_psycopg(engine) as log:
            yield log
        return
    log = SqlLog()

    def statement(conn: Connection, *args: Any) -> None:
        log.statements.append(" ".join(str(args[1]).split()))
        if _in_autocommit(conn):
            log.single += 1

    def begun(conn: Connection) -> None:
        if not _in_autocommit(conn):
            log.begun += 1

    def committed(conn: Connection) -> None:
        if not _in_autocommit(conn):
            log.committed += 1

    listeners = [
        ("before_cursor_execute", statement),
        ("begin", begun),
        ("commit", committed),
    ]
    for name, listener in listeners:
        event.listen(engine, name, listener)
    try:
        yield log
    finally:
        for name, listener in listeners:
            event.remove(engine, name, listener)


@contextmanager
def _sent_by_psycopg(engine: Engine) -> Iterator[SqlLog]:
    """sql_counted on PostgreSQL: every connection checked out of the pool inside the block
    makes its cursors count what they send. A statement outside autocommit that finds no
    transaction open makes psycopg send a BEGIN first: that is a transaction block begun."""
    log = SqlLog()
    factories: dict[int, Any] = {}

    def counting(base: type[psycopg.Cursor[Any]]) -> type[psycopg.Cursor[Any]]:
        class Counting(base):  # type: ignore[valid-type,misc]
            def execute(self, query: Any, *args: Any, **kwargs: Any) -> Any:
                conn = self.connection
                log.statements.append(" ".join(str(query).split()))
                if conn.autocommit:
                    log.single += 1
                elif conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE:
                    log.begun += 1
                return super().execute(query, *args, **kwargs)

        return Counting

    def checkout(dbapi_connection: Any, *_: Any) -> None:
        factories[id(dbapi_connection)] = dbapi_connection.cursor_factory
        dbapi_connection.cursor_factory = counting(dbapi_connection.cursor_factory)

    def checkin(dbapi_connection: Any, *_: Any) -> None:
        if id(dbapi_connection) in factories:
            dbapi_connection.cursor_factory = factories.pop(id(dbapi_connection))

    def committed(conn: Connection) -> None:
        if not _in_autocommit(conn):
            log.committed += 1

    event.listen(engine.pool, "checkout", checkout)
    event.listen(engine.pool, "checkin", checkin)
    event.listen(engine, "commit", committed)
    try:
        yield log
    finally:
        event.remove(engine.pool, "checkout", checkout)
        event.remove(engine.pool, "checkin", checkin)
        event.remove(engine, "commit", committed)


def migrated_ledger(tmp_path: Path, clock: Callable[[], datetime], name: str = "ledger") -> Ledger:
    """A SQLite ledger file brought to the newest schema by the real Alembic migration."""
    engine = make_engine(f"sqlite:///{tmp_path / name}.db")
    upgrade(engine)
    return Ledger.on(engine, clock)


def an_authenticator(policy: ProducerPolicy | None = None) -> Authenticator:
    """An Authenticator as production builds one: signatures required, :data:`PRODUCER`'s
    key known, and `policy` (no limits unless given) as its producer's."""
    return Authenticator(
        keys={PRODUCER.producer: {PRODUCER.key_id: PRODUCER.secret}},
        policies={PRODUCER.producer: policy or ProducerPolicy()},
        require_signatures=True,
    )


def _raw(body: str | bytes) -> bytes:
    return body.encode("utf-8") if isinstance(body, str) else body


@dataclass
class World:
    """Everything one handler call touches, built from fakes and a real SQLite ledger.
    Commands are admitted by `auth` with signatures required, as in production; events leave
    through `outbound` (pump-like) to the broker `publisher`."""

    clock: FakeClock
    ledger: Ledger
    stripe: FakeStripe
    publisher: FakePublisher
    config: HandlerConfig = field(default_factory=HandlerConfig)
    auth: Authenticator = field(default_factory=an_authenticator)
    outbound: FakeOutbound = field(init=False)

    def __post_init__(self) -> None:
        self.outbound = FakeOutbound(self.publisher, self.ledger.outbox.mark_sent_many)

    def services(self) -> Services:
        return Services(
            ledger=self.ledger,
            stripe=self.stripe,
            outbound=self.outbound,
            rules=RuleTables(),
            config=self.config,
            clock=self.clock,
            auth=self.auth,
            records=self.stripe,
        )

    def signed(self, body: str | bytes, signer: Signer = PRODUCER) -> dict[str, str]:
        """The headers `signer` publishes `body` with, timestamped by the World's clock."""
        return signer.headers_for(_raw(body), int(self.clock().timestamp()))

    def handle(
        self,
        body: str | bytes,
        owner: str = "worker-1",
        headers: Mapping[str, str] | None = None,
        services: Services | None = None,
    ) -> Result:
        """A command's first attempt, admitted as production admits it: with the headers
        given, else signed now by :data:`PRODUCER`."""
        return handle_debit_requested(
            body,
            services or self.services(),
            owner,
            self.signed(body) if headers is None else headers,
        )

    def delivery(self, body: str | bytes, headers: Mapping[str, str] | None = None) -> Delivery:
        """The command as the intake hands it to its first attempt: with the headers given
        (else signed by :data:`PRODUCER`), stamped with its receipt by the World's clock."""
        carried = dict(self.signed(body) if headers is None else headers)
        carried[RECEIVED_AT_HEADER] = f"{self.clock().timestamp():.3f}"
        return Delivery(_raw(body), carried, dict(carried), "application/json")


def a_world(tmp_path: Path) -> World:
    """A debitable account with consent on record, and a refund of 50.00 USD."""
    clock = FakeClock()
    return a_world_on(migrated_ledger(tmp_path, clock), clock)


def a_world_on(ledger: Ledger, clock: FakeClock) -> World:
    """a_world on a ledger of the caller's (PostgreSQL, say) that reads `clock`."""
    stripe = FakeStripe(clock=clock)
    stripe.add_account(an_account())
    stripe.add_refund(a_refund())
    ledger.consents.grant(ACCOUNT_ID, "agreements/acct_1Debtor.pdf", "ops@example.com")
    clock.advance(1)
    return World(clock=clock, ledger=ledger, stripe=stripe, publisher=FakePublisher())


def a_body(**changes: Any) -> str:
    """A valid DebitRequested body (a platform charge of 25.00 USD), with `changes`; a value
    of None removes the field."""
    fields: dict[str, Any] = {
        "request_id": "req-1",
        "account": ACCOUNT_ID,
        "amount": 2500,
        "currency": "usd",
        "reason": "platform_charge",
    }
    fields.update(changes)
    return json.dumps({key: value for key, value in fields.items() if value is not None})


def a_recovery_body(**changes: Any) -> str:
    return a_body(reason="refund_recovery", refund=REFUND_ID, **changes)
