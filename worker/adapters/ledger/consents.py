"""Consent records: an account's legally binding agreement to be debited, and its revocation.

Stripe does not check consent; the platform must. Every grant and revocation is audited.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import insert, or_, select, update

from worker.adapters.ledger.audit import write_audit
from worker.adapters.ledger.statements import given
from worker.adapters.ledger.store import Store
from worker.adapters.ledger.tables import consents
from worker.domain.types import ConsentRecord

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
                .where(_c.account == account, _c.revoked_at.is_(None))
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
        query = select(*_COLUMNS).order_by(_c.account, _c.granted_at)
        if account is not None:
            query = query.where(_c.account == account)
        with self._engine.connect() as conn:
            return [ConsentRecord(*row) for row in conn.execute(query)]
