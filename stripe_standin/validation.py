"""Validation of ``POST /v1/payment_intents`` parameters, with Stripe's messages and codes."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from stripe_standin import currencies
from stripe_standin.errors import (
    invalid_request,
    missing_param,
    resource_missing,
    unknown_param,
)

MAX_DESCRIPTION = 1000
MAX_METADATA_KEYS = 50
MAX_METADATA_KEY_LENGTH = 40
MAX_METADATA_VALUE_LENGTH = 500
MAX_STATEMENT_DESCRIPTOR = 22

CAPTURE_METHODS = ("automatic", "automatic_async", "manual")
CONFIRMATION_METHODS = ("automatic", "manual")
SETUP_FUTURE_USAGES = ("off_session", "on_session")
ALLOW_REDIRECTS = ("always", "never")

KNOWN_PARAMS = frozenset(
    {
        "amount",
        "automatic_payment_methods",
        "capture_method",
        "confirmation_method",
        "currency",
        "customer",
        "description",
        "expand",
        "metadata",
        "payment_method_types",
        "receipt_email",
        "setup_future_usage",
        "statement_descriptor",
        "statement_descriptor_suffix",
    }
)


@dataclass(frozen=True)
class CreateParams:
    """Validated parameters of a PaymentIntent creation."""

    amount: int
    currency: str
    description: str | None = None
    metadata: dict[str, str] = field(default_factory=dict)
    capture_method: str = "automatic_async"
    confirmation_method: str = "automatic"
    payment_method_types: tuple[str, ...] = ("card",)
    automatic_payment_methods: dict[str, Any] | None = None
    receipt_email: str | None = None
    setup_future_usage: str | None = None
    statement_descriptor: str | None = None
    statement_descriptor_suffix: str | None = None


def validate_create(form: dict[str, Any]) -> CreateParams:
    """Check decoded form parameters like Stripe; raise ``StripeError`` on the first problem."""
    for name in form:
        if name not in KNOWN_PARAMS:
            raise unknown_param(name)

    amount = _amount(form)
    currency = _currency(form)
    minimum = currencies.minimum_amount(currency)
    if amount < minimum:
        raise invalid_request(
            f"Amount must be at least {currencies.format_amount(minimum, currency)} {currency}",
            param="amount",
            code="amount_too_small",
        )
    if amount > currencies.MAXIMUM_AMOUNT:
        limit = currencies.format_amount(currencies.MAXIMUM_AMOUNT, currency)
        raise invalid_request(
            f"Amount must be no more than {limit}", param="amount", code="amount_too_large"
        )

    if "customer" in form:
        customer = _string(form, "customer")
        raise resource_missing("customer", customer or "", "customer")

    return CreateParams(
        amount=amount,
        currency=currency,
        description=_bounded_string(form, "description", MAX_DESCRIPTION),
        metadata=_metadata(form.get("metadata")),
        capture_method=_enum(form, "capture_method", CAPTURE_METHODS) or "automatic_async",
        confirmation_method=_enum(form, "confirmation_method", CONFIRMATION_METHODS) or "automatic",
        payment_method_types=_payment_method_types(form),
        automatic_payment_methods=_automatic_payment_methods(form),
        receipt_email=_string(form, "receipt_email"),
        setup_future_usage=_enum(form, "setup_future_usage", SETUP_FUTURE_USAGES),
        statement_descriptor=_bounded_string(
            form, "statement_descriptor", MAX_STATEMENT_DESCRIPTOR
        ),
        statement_descriptor_suffix=_bounded_string(
            form, "statement_descriptor_suffix", MAX_STATEMENT_DESCRIPTOR
        ),
    )


def _amount(form: dict[str, Any]) -> int:
    raw = form.get("amount")
    if raw is None or raw == "":
        raise missing_param("amount")
    if not isinstance(raw, str) or not raw.lstrip("-").isdigit():
        shown = raw if isinstance(raw, str) else "a hash"
        raise invalid_request(
            f"Invalid integer: {shown}", param="amount", code="parameter_invalid_integer"
        )
    value = int(raw)
    if value < 1:
        raise invalid_request(
            "This value must be greater than or equal to 1.",
            param="amount",
            code="parameter_invalid_integer",
        )
    return value


def _currency(form: dict[str, Any]) -> str:
    raw = form.get("currency")
    if raw is None or raw == "":
        raise missing_param("currency")
    value = raw.lower() if isinstance(raw, str) else ""
    if value not in currencies.SUPPORTED:
        shown = raw if isinstance(raw, str) else "a hash"
        supported = ", ".join(sorted(currencies.SUPPORTED))
        raise invalid_request(
            f"Invalid currency: {shown}. Stripe currently supports these currencies: {supported}",
            param="currency",
        )
    return value


def _string(form: dict[str, Any], name: str) -> str | None:
    raw = form.get(name)
    if raw is None or raw == "":
        return None
    if not isinstance(raw, str):
        raise invalid_request(
            f"Invalid string: {name} must be a string, not a hash or an array.", param=name
        )
    return raw


def _bounded_string(form: dict[str, Any], name: str, limit: int) -> str | None:
    value = _string(form, name)
    if value is not None and len(value) > limit:
        raise invalid_request(
            f"Invalid string: {value[:20]}...; must be at most {limit} characters",
            param=name,
        )
    return value


def _enum(form: dict[str, Any], name: str, allowed: tuple[str, ...]) -> str | None:
    value = _string(form, name)
    if value is not None and value not in allowed:
        choices = ", ".join(allowed[:-1]) + f", or {allowed[-1]}"
        raise invalid_request(f"Invalid {name}: must be one of {choices}", param=name)
    return value


def validate_metadata(raw: Any) -> dict[str, str]:
    """A create's ``metadata`` with Stripe's limits (50 keys, 40/500 characters, strings)."""
    return _metadata(raw)


def _metadata(raw: Any) -> dict[str, str]:
    if raw is None or raw == "":
        return {}
    if not isinstance(raw, dict):
        raise invalid_request(
            "Invalid metadata: metadata must be a hash of string keys and values.",
            param="metadata",
        )
    if len(raw) > MAX_METADATA_KEYS:
        raise invalid_request(
            f"Invalid metadata: metadata can have at most {MAX_METADATA_KEYS} keys.",
            param="metadata",
        )
    metadata: dict[str, str] = {}
    for key, value in raw.items():
        param = f"metadata[{key}]"
        if not isinstance(value, str):
            raise invalid_request(
                f"Invalid value for {param}: metadata values must be strings.", param=param
            )
        if len(key) > MAX_METADATA_KEY_LENGTH:
            raise invalid_request(
                f"Metadata keys can have up to {MAX_METADATA_KEY_LENGTH} characters, but you "
                f"passed in a key that is {len(key)} characters.",
                param=param,
            )
        if len(value) > MAX_METADATA_VALUE_LENGTH:
            raise invalid_request(
                f"Metadata values can have up to {MAX_METADATA_VALUE_LENGTH} characters, but "
                f"you passed in a value that is {len(value)} characters.",
                param=param,
            )
        if value != "":  # an empty value unsets the key, as in Stripe
            metadata[key] = value
    return metadata


def _payment_method_types(form: dict[str, Any]) -> tuple[str, ...]:
    raw = form.get("payment_method_types")
    if raw is None or raw == "":
        return ("card",)
    if not isinstance(raw, list) or not all(isinstance(item, str) and item for item in raw):
        raise invalid_request(
            "Invalid array: payment_method_types must be an array of strings.",
            param="payment_method_types",
        )
    return tuple(raw)


def _automatic_payment_methods(form: dict[str, Any]) -> dict[str, Any] | None:
    raw = form.get("automatic_payment_methods")
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise invalid_request(
            "Invalid hash: automatic_payment_methods must be a hash.",
            param="automatic_payment_methods",
        )
    for name in raw:
        if name not in ("enabled", "allow_redirects"):
            raise unknown_param(f"automatic_payment_methods[{name}]")
    enabled = raw.get("enabled")
    if enabled not in ("true", "false"):
        if enabled is None:
            raise missing_param("automatic_payment_methods[enabled]")
        raise invalid_request(
            f"Invalid boolean: {enabled}", param="automatic_payment_methods[enabled]"
        )
    redirects = raw.get("allow_redirects", "always")
    if redirects not in ALLOW_REDIRECTS:
        raise invalid_request(
            "Invalid automatic_payment_methods[allow_redirects]: must be one of always, or never",
            param="automatic_payment_methods[allow_redirects]",
        )
    if enabled == "false":
        return {"enabled": False}
    return {"allow_redirects": redirects, "enabled": True}
