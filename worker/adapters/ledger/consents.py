"""Consent records: an account's legally binding agreement to be debited, and its revocation.

Stripe does not check consent; the platform must. Every grant and revocation is audited.
Granting is idempotent: an account with an active consent under the same agreement is not
granted it again (no second row, no second audit entry).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Final

from sqlalchemy import Connection, insert, or_, select, text, update

from worker.adapters.ledger.audit import write_audit
from worker.adapters.ledger.statements import given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import audit_log, consents
from worker.domain.types import ConsentRecord

# Rows per transaction of a bulk grant: within SQLite's oldest limit of 999 parameters for
# the lookup of the chunk's active consents.
GRANT_CHUNK: Final = 500
# Held by every grant's transaction on PostgreSQL, so that two grants of the same consent at
# once cannot both find it missing (SQLite runs one writing transaction at a time).
_GRANT_LOCK: Final = 0x64656269745F636E  # "debit_cn"

_c = consents.c
_COLUMNS = (
    _c.account,
    _c.agreement_ref,
    _c.granted_at,
    _c.granted_by,
    _c.revoked_at,
    _c.revoked_by,
)
# Read for every debit. Its columns in ConsentRecord's order.
_ACTIVE = (
    select(*_COLUMNS)
    .where(
        _c.account == given("account", _c.account),
        _c.granted_at <= given("at", _c.granted_at),
        or_(_c.revoked_at.is_(None), _c.revoked_at > given("at", _c.revoked_at)),
    )
    .order_by(_c.granted_at.desc())
    .limit(1)
)


@dataclass(frozen=True, slots=True)
class ConsentGrant:
    account: str
    agreement_ref: str
    actor: str


@dataclass(frozen=True)
class GrantsDone:
    granted: int
    already: int  # had an active consent under that agreement (or repeated a row before)


class ConsentStore(Store):
    def grant(self, account: str, agreement_ref: str, actor: str) -> ConsentRecord:
        """The account's active consent under `agreement_ref`: granted now, or the one it
        already had (then nothing is written)."""
        now = self._clock()
        with self._engine.begin() as conn:
            _lock_grants(conn)
            found = conn.execute(
                select(*_COLUMNS)
                .where(
                    _c.account == account,
                    _c.agreement_ref == agreement_ref,
                    _c.revoked_at.is_(None),
                )
                .order_by(_c.granted_at)
                .limit(1)
            ).one_or_none()
            if found is not None:
                return ConsentRecord(*found)
            conn.execute(
                insert(consents).values(
                    account=account, agreement_ref=agreement_ref, granted_at=now, granted_by=actor
                )
            )
            write_audit(
                conn,
                at=now,
                entity="consent",
                entity_id=account,
                action="granted",
                actor=actor,
                detail={"agreement_ref": agreement_ref},
            )
        return ConsentRecord(account, agreement_ref, now, actor)

    def grant_many(
        self, grants: Sequence[ConsentGrant], *, source: str | None = None
    ) -> GrantsDone:
        """Grant each consent its account does not hold yet, GRANT_CHUNK rows per transaction
        (a failure keeps the chunks before it; running the same grants again finishes the
        rest). `source` (e.g. the file imported) goes into each audit entry."""
        granted = already = 0
        seen: set[tuple[str, str]] = set()
        for start in range(0, len(grants), GRANT_CHUNK):
            chunk = grants[start : start + GRANT_CHUNK]
            fresh = []
            with self._engine.begin() as conn:
                _lock_grants(conn)
                held = _active_pairs(conn, {g.account for g in chunk})
                for one in chunk:
                    pair = (one.account, one.agreement_ref)
                    if pair in held or pair in seen:
                        already += 1
                    else:
                        fresh.append(one)
                    seen.add(pair)
                if fresh:
                    _insert_grants(conn, fresh, self._clock(), source)
            granted += len(fresh)
        return GrantsDone(granted, already)

    def revoke(self, account: str, actor: str) -> int:
        """Revoke every active consent of the account; returns how many were active."""
        now = self._clock()
        with self._engine.begin() as conn:
            count = conn.execute(
                update(consents)
                .where(_c.account == account, _c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=actor)
            ).rowcount
            if count:  # nothing revoked, nothing changed: no audit entry
                write_audit(
                    conn,
                    at=now,
                    entity="consent",
                    entity_id=account,
                    action="revoked",
                    actor=actor,
                    detail={"consents_revoked": count},
                )
        return int(count)

    def active(self, account: str, at: datetime) -> ConsentRecord | None:
        found = self._run.one(_ACTIVE, {"account": account, "at": at})
        return None if found is None else ConsentRecord(*found)

    def list(self, account: str | None = None) -> list[ConsentRecord]:
        query = select(*_COLUMNS).order_by(_c.account, _c.granted_at)
        if account is not None:
            query = query.where(_c.account == account)
        with self._engine.connect() as conn:
            return [ConsentRecord(*row) for row in conn.execute(query)]


def _lock_grants(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _GRANT_LOCK})


def _active_pairs(conn: Connection, accounts: set[str]) -> set[tuple[str, str]]:
    rows = conn.execute(
        select(_c.account, _c.agreement_ref).where(
            _c.account.in_(sorted(accounts)), _c.revoked_at.is_(None)
        )
    )
    return {(account, agreement) for account, agreement in rows}


def _insert_grants(
    conn: Connection, grants: list[ConsentGrant], now: datetime, source: str | None
) -> None:
    conn.execute(
        insert(consents),
        [
            {
                "account": g.account,
                "agreement_ref": g.agreement_ref,
                "granted_at": now,
                "granted_by": g.actor,
            }
            for g in grants
        ],
    )
    detail = {"source": source} if source else {}
    conn.execute(
        insert(audit_log),
        [
            {
                "at": now,
                "entity": "consent",
                "entity_id": g.account,
                "action": "granted",
                "actor": g.actor,
                "detail": {"agreement_ref": g.agreement_ref, **detail},
            }
            for g in grants
        ],
    )
