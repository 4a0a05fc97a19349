"""JSON bodies shaped like Stripe's objects (API version 2023-08-16 plus newer fields such
as `controller.losses`), built from the ledger's records."""

from __future__ import annotations

from typing import Any

from worker.sandbox.events import Event
from worker.sandbox.seed import ChargeSeed, Controller, RefundSeed
from worker.sandbox.state import Account, Payment, Transfer

Json = dict[str, Any]
API_VERSION = "2023-08-16"  # the version whose OpenAPI description the sandbox follows


def account(record: Account) -> Json:
    seed = record.seed
    body: Json = {
        "id": seed.id,
        "object": "account",
        "business_profile": {"name": seed.business_name, "url": None, "mcc": None},
        "business_type": "company",
        "capabilities": {"card_payments": "active", "transfers": "active"},
        "charges_enabled": seed.charges_enabled,
        "country": seed.country,
        "created": seed.created,
        "default_currency": seed.default_currency,
        "details_submitted": True,
        "email": seed.email,
        "metadata": {},
        "payouts_enabled": seed.payouts_enabled,
        "requirements": _no_requirements(),
        "type": seed.type,
    }
    if seed.controller is not None:
        body["controller"] = controller(seed.controller)
    return body


def controller(seed: Controller) -> Json:
    body: Json = {"type": seed.type, "is_controller": seed.is_controller}
    if seed.losses is not None:
        body["losses"] = {"payments": seed.losses.payments}
    if seed.fees_payer is not None:
        body["fees"] = {"payer": seed.fees_payer}
    if seed.stripe_dashboard is not None:
        body["stripe_dashboard"] = {"type": seed.stripe_dashboard}
    if seed.requirement_collection is not None:
        body["requirement_collection"] = seed.requirement_collection
    return body


def balance(record: Account) -> Json:
    currencies = sorted({*record.available, *record.pending, record.seed.default_currency})
    return {
        "object": "balance",
        "available": [_amount(record.available.get(c, 0), c) for c in currencies],
        "pending": [_amount(record.pending.get(c, 0), c) for c in currencies],
        "livemode": False,
    }


def payment(record: Payment) -> Json:
    """The Payment (`py_`) on the platform that an account debit created."""
    body = _charge(record.id, record.amount, record.currency, record.created, record.description)
    failed = record.status == "failed"
    body.update(
        {
            "amount_captured": 0 if failed else record.amount,
            "balance_transaction": record.balance_transaction,
            "captured": not failed,
            "failure_code": "processing_error" if failed else None,
            "failure_message": "An error occurred while processing the debit." if failed else None,
            "metadata": dict(record.metadata),
            "paid": record.status == "succeeded",
            "source": {"id": record.source_account, "object": "account"},
            "source_transfer": record.transfer_id,
            "status": record.status,
        }
    )
    return body


def sale(record: ChargeSeed) -> Json:
    """A seeded sale the platform charged (and later refunded), naming the account it paid."""
    body = _charge(record.id, record.amount, record.currency, record.created, record.description)
    body.update(
        {
            "metadata": dict(record.metadata),
            "on_behalf_of": record.on_behalf_of,
            "transfer_data": (
                {"amount": None, "destination": record.destination} if record.destination else None
            ),
        }
    )
    return body


# A charge's fields that are null unless `payment` or `sale` sets them.
_NULL_CHARGE_FIELDS = (
    "application", "application_fee", "application_fee_amount", "balance_transaction",
    "calculated_statement_descriptor", "customer", "failure_balance_transaction",
    "failure_code", "failure_message", "invoice", "on_behalf_of", "outcome", "payment_intent",
    "payment_method", "payment_method_details", "receipt_email", "receipt_number",
    "receipt_url", "review", "shipping", "source", "source_transfer", "statement_descriptor",
    "statement_descriptor_suffix", "transfer_data", "transfer_group",
)  # fmt: skip


def _charge(ident: str, amount: int, currency: str, created: int, description: str | None) -> Json:
    """A succeeded charge's fields, the ones both kinds of charge share."""
    return {
        **dict.fromkeys(_NULL_CHARGE_FIELDS),
        "id": ident,
        "object": "charge",
        "amount": amount,
        "amount_captured": amount,
        "amount_refunded": 0,
        "billing_details": {"address": None, "email": None, "name": None, "phone": None},
        "captured": True,
        "created": created,
        "currency": currency,
        "description": description,
        "disputed": False,
        "fraud_details": {},
        "livemode": False,
        "metadata": {},
        "paid": True,
        "refunded": False,
        "refunds": _empty_list(f"/v1/charges/{ident}/refunds"),
        "status": "succeeded",
    }


def transfer(record: Transfer) -> Json:
    return {
        "id": record.id,
        "object": "transfer",
        "amount": record.amount,
        "amount_reversed": 0,
        "balance_transaction": record.balance_transaction,
        "created": record.created,
        "currency": record.currency,
        "description": record.description,
        "destination": record.destination,
        "destination_payment": record.destination_payment,
        "livemode": False,
        "metadata": dict(record.metadata),
        "reversals": _empty_list(f"/v1/transfers/{record.id}/reversals"),
        "reversed": False,
        "source_transaction": None,
        "source_type": "card",
        "transfer_group": None,
    }


def refund(record: RefundSeed, charge: Json | None = None) -> Json:
    """`charge`: the refunded charge's body when it is expanded, else only its id is sent."""
    body: Json = {
        "id": record.id,
        "object": "refund",
        "amount": record.amount,
        "balance_transaction": None,
        "charge": charge if charge is not None else record.charge,
        "created": record.created,
        "currency": record.currency,
        "metadata": dict(record.metadata),
        "payment_intent": None,
        "reason": record.reason,
        "receipt_number": None,
        "source_transfer_reversal": None,
        "status": record.status,
        "transfer_reversal": None,
    }
    if record.status == "failed" and record.failure_reason:
        body["failure_reason"] = record.failure_reason
    return body


def event(record: Event) -> Json:
    """An event about a charge; `data.object` is the charge as it was when it happened."""
    return {
        "id": record.id,
        "object": "event",
        "api_version": API_VERSION,
        "created": record.created,
        "data": {"object": payment(record.payment)},
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": record.request_id, "idempotency_key": record.idempotency_key},
        "type": record.type,
    }


def listed(url: str, data: list[Json], has_more: bool) -> Json:
    """A page of a top-level list (`GET /v1/charges`, `GET /v1/events`)."""
    return {"object": "list", "data": data, "has_more": has_more, "url": url}


def _amount(value: int, currency: str) -> Json:
    return {"amount": value, "currency": currency, "source_types": {"card": value}}


def _empty_list(url: str) -> Json:
    return {"object": "list", "data": [], "has_more": False, "total_count": 0, "url": url}


def _no_requirements() -> Json:
    return {
        "alternatives": [],
        "current_deadline": None,
        "currently_due": [],
        "disabled_reason": None,
        "errors": [],
        "eventually_due": [],
        "past_due": [],
        "pending_verification": [],
    }
