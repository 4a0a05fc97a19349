"""Consent records: an account's legally binding agreement to be debited, and its revocation.

Stripe does not check consent; the platform must. Every grant and revocation is audited.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Engine, bindparam, insert, or_, select, update

from worker.facts import ConsentRecord
from worker.ledger.audit import write_audit
from worker.ledger.database import single_statements
from worker.ledger.pg_direct import applies_to, run_alone
from worker.ledger.tables import consents


def _consent(row: Any) -> ConsentRecord:
    return ConsentRecord(
        account_id=row["account"],
        agreement_ref=row["agreement_ref"],
        granted_at=row["granted_at"],
        granted_by=row["granted_by"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


def _consent_from_postgresql(row: tuple[Any, ...]) -> ConsentRecord:
    account, agreement_ref, granted_at, granted_by, revoked_at, revoked_by = row
    return ConsentRecord(
        account_id=account,
        agreement_ref=agreement_ref,
        granted_at=granted_at.astimezone(UTC),
        granted_by=granted_by,
        revoked_at=None if revoked_at is None else revoked_at.astimezone(UTC),
        revoked_by=revoked_by,
    )


# Read for every debit: built once, executed with parameters (see ledger/database.py).
_ACTIVE = (
    select(consents)
    .where(
        consents.c.account == bindparam("b_account"),
        consents.c.granted_at <= bindparam("b_at", type_=consents.c.granted_at.type),
        or_(
            consents.c.revoked_at.is_(None),
            consents.c.revoked_at > bindparam("b_at", type_=consents.c.revoked_at.type),
        ),
    )
    .order_by(consents.c.granted_at.desc())
    .limit(1)
)
# The same on PostgreSQL, run on psycopg directly (pg_direct.py).
_ACTIVE_ON_POSTGRESQL = """
    SELECT account, agreement_ref, granted_at, granted_by, revoked_at, revoked_by
    FROM consents
    WHERE account = %(account)s AND granted_at <= %(at)s
      AND (revoked_at IS NULL OR revoked_at > %(at)s)
    ORDER BY granted_at DESC
    LIMIT 1
"""


class ConsentStore:
    def __init__(self, engine: Engine, clock: Callable[[], datetime]) -> None:
        self._engine = engine
        self._single = single_statements(engine)
        self._direct = applies_to(engine)  # the hot path's statements on psycopg directly
        self._clock = clock

    def grant(self, account: str, agreement_ref: str, actor: str) -> ConsentRecord:
        now = self._clock()
        with self._engine.begin() as conn:
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

    def revoke(self, account: str, actor: str) -> int:
        """Revoke every active consent of the account; returns how many were active."""
        now = self._clock()
        with self._engine.begin() as conn:
            count = conn.execute(
                update(consents)
                .where(consents.c.account == account, consents.c.revoked_at.is_(None))
                .values(revoked_at=now, revoked_by=actor)
            ).rowcount
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
        if self._direct:
            found = run_alone(self._engine, _ACTIVE_ON_POSTGRESQL, {"account": account, "at": at})
            return None if found is None else _consent_from_postgresql(found)
        with self._single.connect() as conn:
            row = conn.execute(_ACTIVE, {"b_account": account, "b_at": at}).mappings().one_or_none()
        return None if row is None else _consent(row)

    def list(self, account: str | None = None) -> list[ConsentRecord]:
        query = select(consents).order_by(consents.c.account, consents.c.granted_at)
        if account is not None:
            query = query.where(consents.c.account == account)
        with self._engine.connect() as conn:
            return [_consent(row) for row in conn.execute(query).mappings()]
