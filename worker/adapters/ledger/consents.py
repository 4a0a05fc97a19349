"""Consent records: an account's legally binding agreement to be debited, and its revocation.

Stripe does not check consent; the platform must. Every grant and revocation is audited.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import insert, or_, select, update

from worker.adapters.ledger.audit import write_audit
from worker.adapters.ledger.statements import given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import consents
from worker.domain.types import ConsentRecord


def _consent(row: Any) -> ConsentRecord:
    return ConsentRecord(
        account_id=row["account"],
        agreement_ref=row["agreement_ref"],
        granted_at=row["granted_at"],
        granted_by=row["granted_by"],
        revoked_at=row["revoked_at"],
        revoked_by=row["revoked_by"],
    )


# Read for every debit. Its columns in ConsentRecord's order.
_ACTIVE = (
    select(
        consents.c.account,
        consents.c.agreement_ref,
        consents.c.granted_at,
        consents.c.granted_by,
        consents.c.revoked_at,
        consents.c.revoked_by,
    )
    .where(
        consents.c.account == given("account", consents.c.account),
        consents.c.granted_at <= given("at", consents.c.granted_at),
        or_(
            consents.c.revoked_at.is_(None),
            consents.c.revoked_at > given("at", consents.c.revoked_at),
        ),
    )
    .order_by(consents.c.granted_at.desc())
    .limit(1)
)


class ConsentStore(Store):
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
        found = self._run.one(_ACTIVE, {"account": account, "at": at})
        return None if found is None else ConsentRecord(*found)

    def list(self, account: str | None = None) -> list[ConsentRecord]:
        query = select(consents).order_by(consents.c.account, consents.c.granted_at)
        if account is not None:
            query = query.where(consents.c.account == account)
        with self._engine.connect() as conn:
            return [_consent(row) for row in conn.execute(query).mappings()]
