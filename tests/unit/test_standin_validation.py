"""Form decoding, parameter validation and error bodies of the Stripe stand-in."""

import pytest

from stripe_standin.errors import StripeError, invalid_api_key, mask_api_key
from stripe_standin.params import decode_form, fingerprint
from stripe_standin.validation import validate_create


def _error(form: dict[str, object]) -> StripeError:
    with pytest.raises(StripeError) as info:
        validate_create(form)
    return info.value


# --- decode_form -----------------------------------------------------------------------------


def test_decode_form_builds_nested_hashes_and_lists() -> None:
    body = (
        "amount=1234&currency=usd&metadata[payment_id]=42&metadata[note]=a%20b"
        "&payment_method_types[0]=card&payment_method_types[1]=link&expand[]=x&expand[]=y"
        "&automatic_payment_methods[enabled]=true"
    )
    assert decode_form(body) == {
        "amount": "1234",
        "currency": "usd",
        "metadata": {"payment_id": "42", "note": "a b"},
        "payment_method_types": ["card", "link"],
        "expand": ["x", "y"],
        "automatic_payment_methods": {"enabled": "true"},
    }


def test_decode_form_keeps_numeric_metadata_keys_as_a_hash() -> None:
    assert decode_form("metadata[0]=a&metadata[7]=b") == {"metadata": {"0": "a", "7": "b"}}


def test_decode_form_keeps_blank_values() -> None:
    assert decode_form("description=&metadata[x]=") == {"description": "", "metadata": {"x": ""}}


def test_decode_form_rejects_a_value_that_is_also_a_hash() -> None:
    with pytest.raises(StripeError) as info:
        decode_form("metadata=x&metadata[a]=b")
    assert info.value.status == 400
    assert info.value.param == "metadata[a]"


def test_fingerprint_ignores_field_order_but_not_values_or_path() -> None:
    base = fingerprint("POST", "/v1/payment_intents", "amount=100&currency=usd")
    assert base == fingerprint("POST", "/v1/payment_intents", "currency=usd&amount=100")
    assert base != fingerprint("POST", "/v1/payment_intents", "amount=101&currency=usd")
    assert base != fingerprint("POST", "/v1/customers", "amount=100&currency=usd")


# --- validate_create -------------------------------------------------------------------------


def test_minimal_create_gets_stripe_defaults() -> None:
    params = validate_create({"amount": "1234", "currency": "usd"})
    assert params.amount == 1234
    assert params.currency == "usd"
    assert params.description is None
    assert params.metadata == {}
    assert params.capture_method == "automatic_async"
    assert params.confirmation_method == "automatic"
    assert params.payment_method_types == ("card",)


def test_full_create_keeps_every_value() -> None:
    params = validate_create(
        {
            "amount": "99999999",
            "currency": "EUR",
            "description": "d" * 1000,
            "metadata": {"payment_id": "42", "dropped": ""},
            "capture_method": "manual",
            "payment_method_types": ["card", "sepa_debit"],
            "automatic_payment_methods": {"enabled": "true", "allow_redirects": "never"},
        }
    )
    assert params.amount == 99_999_999
    assert params.currency == "eur"  # Stripe lower-cases currencies
    assert params.metadata == {"payment_id": "42"}  # an empty value unsets a key
    assert params.capture_method == "manual"
    assert params.payment_method_types == ("card", "sepa_debit")
    assert params.automatic_payment_methods == {"allow_redirects": "never", "enabled": True}


@pytest.mark.parametrize(
    ("amount", "currency", "message"),
    [
        ("49", "usd", "Amount must be at least $0.50 usd"),
        ("49", "eur", "Amount must be at least €0.50 eur"),
        ("29", "gbp", "Amount must be at least £0.30 gbp"),
        ("49", "jpy", "Amount must be at least ¥50 jpy"),
        ("249", "dkk", "Amount must be at least 2.50 dkk"),
    ],
)
def test_amount_below_the_currency_minimum(amount: str, currency: str, message: str) -> None:
    error = _error({"amount": amount, "currency": currency})
    assert (error.status, error.code, error.param, error.message) == (
        400,
        "amount_too_small",
        "amount",
        message,
    )


def test_currency_minimum_itself_is_accepted() -> None:
    assert validate_create({"amount": "30", "currency": "gbp"}).amount == 30
    assert validate_create({"amount": "50", "currency": "jpy"}).amount == 50


def test_amount_above_the_maximum() -> None:
    error = _error({"amount": "100000000", "currency": "usd"})
    assert (error.code, error.message) == (
        "amount_too_large",
        "Amount must be no more than $999,999.99",
    )


@pytest.mark.parametrize(
    ("form", "code", "param", "message"),
    [
        ({"currency": "usd"}, "parameter_missing", "amount", "Missing required param: amount."),
        ({"amount": "100"}, "parameter_missing", "currency", "Missing required param: currency."),
        (
            {"amount": "12.5", "currency": "usd"},
            "parameter_invalid_integer",
            "amount",
            "Invalid integer: 12.5",
        ),
        (
            {"amount": "0", "currency": "usd"},
            "parameter_invalid_integer",
            "amount",
            "This value must be greater than or equal to 1.",
        ),
        (
            {"amount": "100", "currency": "usd", "confirm": "true"},
            "parameter_unknown",
            "confirm",
            "Received unknown parameter: confirm",
        ),
    ],
)
def test_invalid_parameters(form: dict[str, object], code: str, param: str, message: str) -> None:
    error = _error(form)
    assert (error.status, error.error_type, error.code, error.param, error.message) == (
        400,
        "invalid_request_error",
        code,
        param,
        message,
    )


def test_unknown_currency_lists_the_supported_ones() -> None:
    error = _error({"amount": "100", "currency": "xyz"})
    assert error.param == "currency"
    assert error.message.startswith("Invalid currency: xyz. Stripe currently supports")
    assert "usd" in error.message


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"description": "d" * 1001}, "description"),
        ({"metadata": {"k" * 41: "v"}}, f"metadata[{'k' * 41}]"),
        ({"metadata": {"k": "v" * 501}}, "metadata[k]"),
        ({"metadata": {f"k{i}": "v" for i in range(51)}}, "metadata"),
        ({"capture_method": "later"}, "capture_method"),
        ({"metadata": "not-a-hash"}, "metadata"),
    ],
)
def test_limits_on_optional_parameters(form: dict[str, object], param: str) -> None:
    error = _error({"amount": "100", "currency": "usd", **form})
    assert (error.status, error.param) == (400, param)


def test_unknown_customer_is_resource_missing() -> None:
    error = _error({"amount": "100", "currency": "usd", "customer": "cus_123"})
    assert (error.status, error.code, error.message) == (
        404,
        "resource_missing",
        "No such customer: 'cus_123'",
    )


# --- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "masked"),
    [
        ("sk_test_abcdefgh1234", "sk_test_********1234"),
        ("sk_live_51HxYz9876", "sk_live_******9876"),
        ("tok_visa123abcd", "tok_*******abcd"),
        ("undefined", "*****ined"),
        ("abc", "***"),
    ],
)
def test_api_keys_are_masked_like_stripe(key: str, masked: str) -> None:
    assert mask_api_key(key) == masked


def test_invalid_key_error_never_contains_the_key() -> None:
    error = invalid_api_key("sk_test_supersecretvalue9876")
    assert error.status == 401
    assert "supersecret" not in error.message
    assert error.message == "Invalid API Key provided: sk_test_****************9876"


def test_error_body_has_stripe_shape() -> None:
    error = _error({"amount": "10", "currency": "usd"})
    body = error.body("req_abc", created=1700000000)
    assert body == {
        "error": {
            "type": "invalid_request_error",
            "code": "amount_too_small",
            "message": "Amount must be at least $0.50 usd",
            "param": "amount",
            "doc_url": "https://stripe.com/docs/error-codes/amount-too-small",
            "request_log_url": "https://dashboard.stripe.com/test/logs/req_abc?t=1700000000",
        }
    }
