"""The platform's charges as Stripe answers for them: `GET /v1/charges/{id}` and the list.

They are the seeded sales, the payments account debits made, and bulk-generated days. Tests
can make Stripe's answers differ from the money the ledger moved: alter a charge's amount,
currency or source account, or remove it (it is then unknown to GET and the list). The
ledger (`state.Ledger`, `GET /_sandbox/state`) keeps the truth, so the books still balance.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.sandbox import objects
from worker.sandbox.bulk import BulkBlock, BulkDay
from worker.sandbox.list_params import ListParams, paginate
from worker.sandbox.listing import Key, KeyedRun, SortedRun
from worker.sandbox.objects import Json
from worker.sandbox.state import Ledger, Payment, PaymentStatus

ACCOUNT_ID = r"^acct_[A-Za-z0-9]+$"
CURRENCY = r"^[a-z]{3}$"


class DirectCharge(BaseModel):
    """`POST /_sandbox/charges`: an account debit made at Stripe without the worker knowing.
    Stripe's checks apply and the money moves, as for `POST /v1/charges`."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    account: str = Field(pattern=ACCOUNT_ID)
    amount: int = Field(gt=0)
    currency: str = Field(pattern=CURRENCY)
    metadata: dict[str, str] = Field(default_factory=dict)
    description: str | None = None
    created: int | None = Field(None, ge=0, description="epoch seconds; default: now")
    idempotency_key: str | None = Field(None, description="shown in its event's request")
    status: PaymentStatus = "succeeded"


class Alteration(BaseModel):
    """`POST /_sandbox/charges/{id}`: what Stripe's answers show instead of the truth."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    amount: int | None = Field(None, gt=0)
    currency: str | None = Field(None, pattern=CURRENCY)
    source: str | None = Field(None, pattern=ACCOUNT_ID)

    @model_validator(mode="after")
    def _changes_something(self) -> Alteration:
        if self.amount is None and self.currency is None and self.source is None:
            raise ValueError("give amount, currency or source")
        return self

    def merged(self, later: Alteration) -> Alteration:
        return Alteration(
            amount=later.amount if later.amount is not None else self.amount,
            currency=later.currency if later.currency is not None else self.currency,
            source=later.source if later.source is not None else self.source,
        )


class PrefixTaken(ValueError):
    """A bulk day's ids could be mistaken for those of a day generated before."""


class ChargeBook:
    def __init__(self, ledger: Ledger) -> None:
        self._ledger = ledger
        self._made = KeyedRun()  # every charge that is not bulk-generated
        self._days: list[BulkBlock] = []
        self._removed: set[str] = set()
        self._altered: dict[str, Alteration] = {}
        self._sequence = 0
        for sale in ledger.charges.values():
            self._made.add(sale.id, self._next_key(sale.created))
        for payment in ledger.payments.values():
            self.add(payment)

    @property
    def bulk_count(self) -> int:
        return sum(len(day) for day in self._days)

    def add(self, payment: Payment) -> None:
        self._made.add(payment.id, self._next_key(payment.created))

    def add_day(self, spec: BulkDay) -> BulkBlock:
        if any(day.overlaps(spec.prefix) for day in self._days):
            raise PrefixTaken(f"prefix {spec.prefix!r} overlaps a bulk day generated before")
        day = BulkBlock(spec, self._sequence + 1)  # after the last number handed out
        self._sequence += spec.count
        self._days.append(day)
        return day

    def key_of(self, ident: str) -> Key | None:
        """Where a charge Stripe knows sits in the list; None for unknown or removed ones."""
        if ident in self._removed:
            return None
        key = self._made.key_of(ident)
        if key is not None:
            return key
        found = self._bulk(ident)
        return found[0].key_at(found[1]) if found is not None else None

    def body(self, ident: str) -> Json | None:
        """The charge as GET /v1/charges/{id} answers it, or None if Stripe does not know it."""
        if ident in self._removed:
            return None
        body = self._true_body(ident)
        if body is None:
            return None
        alteration = self._altered.get(ident)
        return body if alteration is None else _altered(body, alteration)

    def alter(self, ident: str, alteration: Alteration) -> Json | None:
        if self.key_of(ident) is None:
            return None
        earlier = self._altered.get(ident)
        self._altered[ident] = alteration if earlier is None else earlier.merged(alteration)
        return self.body(ident)

    def remove(self, ident: str) -> bool:
        if self.key_of(ident) is None:
            return False
        self._removed.add(ident)
        return True

    def page(self, params: ListParams) -> tuple[list[Json], bool]:
        runs: list[SortedRun] = [self._made, *self._days]
        found = paginate(params, runs, self.key_of, self._removed.__contains__, "charge")
        bodies = [self.body(ident) for ident in found.ids]
        return [body for body in bodies if body is not None], found.has_more

    def _next_key(self, created: int) -> Key:
        self._sequence += 1
        return (created, self._sequence)

    def _true_body(self, ident: str) -> Json | None:
        payment = self._ledger.payments.get(ident)
        if payment is not None:
            return objects.payment(payment)
        sale = self._ledger.charges.get(ident)
        if sale is not None:
            return objects.sale(sale)
        found = self._bulk(ident)
        return objects.payment(found[0].payment(found[1])) if found is not None else None

    def _bulk(self, ident: str) -> tuple[BulkBlock, int] | None:
        for day in self._days:
            index = day.index_of(ident)
            if index is not None:
                return day, index
        return None


def _altered(body: Json, alteration: Alteration) -> Json:
    changed = dict(body)
    if alteration.amount is not None:
        changed["amount"] = alteration.amount
        if body["amount_captured"]:
            changed["amount_captured"] = alteration.amount
    if alteration.currency is not None:
        changed["currency"] = alteration.currency
    if alteration.source is not None:
        changed["source"] = {"id": alteration.source, "object": "account"}
    return changed
