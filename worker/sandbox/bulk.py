"""A day of account-debit charges generated in bulk, for reconciliation at scale.

A block stores only its parameters: charge `i` (0-based) of `count` is `py_{prefix}{i:08d}`,
from `accounts[i % len(accounts)]`, created `day start + floor(i * 86400 / count)`, with
`metadata.request_id = "{prefix}-{i}"`. Its fields are computed when it is read, so a million
charges cost no memory, and the block is a sorted run the list endpoint bisects.
"""

from __future__ import annotations

import bisect
import calendar
import datetime
import re
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from worker.sandbox.listing import Key
from worker.sandbox.state import Payment

SECONDS_PER_DAY = 86_400
MAX_BULK_COUNT = 10_000_000
_DIGITS = re.compile(r"^[0-9]{8,}$")
AccountId = Annotated[str, Field(pattern=r"^acct_[A-Za-z0-9]+$")]


class BulkDay(BaseModel):
    """`POST /_sandbox/charges/bulk`: N succeeded account debits spread over one UTC day."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    day: datetime.date
    count: int = Field(gt=0, le=MAX_BULK_COUNT)
    accounts: tuple[AccountId, ...] = Field(min_length=1)
    amount: int = Field(gt=0)
    currency: str = Field(pattern=r"^[a-z]{3}$")
    prefix: str = Field(pattern=r"^[A-Za-z0-9_]{1,40}$")


class BulkBlock:
    """One generated day: a SortedRun whose records are computed from their position."""

    __slots__ = ("first_sequence", "spec", "start")

    def __init__(self, spec: BulkDay, first_sequence: int) -> None:
        self.spec = spec
        self.first_sequence = first_sequence
        self.start = calendar.timegm(spec.day.timetuple())

    def __len__(self) -> int:
        return self.spec.count

    def created_at(self, index: int) -> int:
        return self.start + index * SECONDS_PER_DAY // self.spec.count

    def key_at(self, index: int) -> Key:
        return (self.created_at(index), self.first_sequence + index)

    def id_at(self, index: int) -> str:
        return f"py_{self.spec.prefix}{index:08d}"

    def position(self, key: Key) -> int:
        return bisect.bisect_left(range(self.spec.count), key, key=self.key_at)

    def index_of(self, ident: str) -> int | None:
        """The position of charge `ident` in this block, or None if it is not one of its."""
        head = f"py_{self.spec.prefix}"
        digits = ident[len(head) :]
        if not ident.startswith(head) or not _DIGITS.match(digits):
            return None
        index = int(digits)
        if index >= self.spec.count or self.id_at(index) != ident:
            return None
        return index

    def payment(self, index: int) -> Payment:
        spec = self.spec
        suffix = f"{spec.prefix}{index:08d}"
        return Payment(
            id=f"py_{suffix}",
            amount=spec.amount,
            currency=spec.currency,
            source_account=spec.accounts[index % len(spec.accounts)],
            transfer_id=f"tr_{suffix}",
            balance_transaction=f"txn_{suffix}",
            description=None,
            metadata={"request_id": f"{spec.prefix}-{index}"},
            created=self.created_at(index),
        )

    def overlaps(self, prefix: str) -> bool:
        """Whether ids made with `prefix` could be mistaken for this block's."""
        return prefix.startswith(self.spec.prefix) or self.spec.prefix.startswith(prefix)
