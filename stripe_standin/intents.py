"""Stripe-shaped PaymentIntent objects and the random identifiers Stripe uses."""

from __future__ import annotations

import secrets
import string
import time
from typing import Any

from stripe_standin.validation import CreateParams

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int) -> str:
    """Random alphanumeric string, like the tails of Stripe ids."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_intent_id() -> str:
    """``pi_`` followed by 24 random characters."""
    return "pi_" + random_token(24)


def new_request_id() -> str:
    """``req_`` followed by 14 random characters, as in Stripe's Request-Id header."""
    return "req_" + random_token(14)


def build_payment_intent(params: CreateParams, *, now: int | None = None) -> dict[str, Any]:
    """A new PaymentIntent in ``requires_payment_method``, with Stripe's field set."""
    intent_id = new_intent_id()
    return {
        "id": intent_id,
        "object": "payment_intent",
        "amount": params.amount,
        "amount_capturable": 0,
        "amount_details": {"tip": {}},
        "amount_received": 0,
        "application": None,
        "application_fee_amount": None,
        "automatic_payment_methods": params.automatic_payment_methods,
        "canceled_at": None,
        "cancellation_reason": None,
        "capture_method": params.capture_method,
        "client_secret": f"{intent_id}_secret_{random_token(25)}",
        "confirmation_method": params.confirmation_method,
        "created": int(time.time()) if now is None else now,
        "currency": params.currency,
        "customer": None,
        "description": params.description,
        "last_payment_error": None,
        "latest_charge": None,
        "livemode": False,
        "metadata": dict(params.metadata),
        "next_action": None,
        "on_behalf_of": None,
        "payment_method": None,
        "payment_method_configuration_details": None,
        "payment_method_options": {},
        "payment_method_types": list(params.payment_method_types),
        "processing": None,
        "receipt_email": params.receipt_email,
        "review": None,
        "setup_future_usage": params.setup_future_usage,
        "shipping": None,
        "source": None,
        "statement_descriptor": params.statement_descriptor,
        "statement_descriptor_suffix": params.statement_descriptor_suffix,
        "status": "requires_payment_method",
        "transfer_data": None,
        "transfer_group": None,
    }
