"""How Stripe's errors are sorted into retry-worthy and final."""

from __future__ import annotations

from uuid import UUID

import pytest
import stripe

from worker.models import Payment
from worker.stripe_gateway import _failure, idempotency_key


@pytest.mark.parametrize(
    ("error", "permanent"),
    [
        (stripe.CardError("Your card was declined.", None, "card_declined"), True),
        (stripe.InvalidRequestError("Amount must be at least 50", "amount"), True),
        (stripe.AuthenticationError("Invalid API Key provided"), True),
        (stripe.PermissionError("not allowed"), True),
        (stripe.IdempotencyError("Keys for idempotent requests", http_status=400), True),
        # idempotency_key_in_use: another request with the key is still running.
        (stripe.IdempotencyError("another in-progress request", http_status=409), False),
        (stripe.APIConnectionError("connection reset"), False),
        (stripe.RateLimitError("Too many requests"), False),
        (stripe.APIError("internal error", http_status=500), False),
        (stripe.APIError("lock timeout", http_status=409), False),
    ],
)
def test_classification(error: stripe.StripeError, permanent: bool) -> None:
    failure = _failure(error)
    assert failure.permanent is permanent
    assert failure.message == error.user_message
    assert failure.kind == type(error).__name__


@pytest.mark.parametrize(
    "error",
    [
        stripe.InvalidRequestError("No such customer: cus_123", "customer"),
        stripe.AuthenticationError("Invalid API Key provided: sk_test_****9999"),
        stripe.PermissionError("The provided key does not have access to account acct_1"),
        stripe.IdempotencyError("Keys for idempotent requests can only be used once"),
        stripe.APIConnectionError("connection reset"),
        stripe.RateLimitError("Too many requests"),
        stripe.APIError("internal error", http_status=500),
    ],
)
def test_only_a_card_error_has_words_for_the_caller(error: stripe.StripeError) -> None:
    failure = _failure(error)
    assert failure.public_message is None
    assert failure.message == error.user_message  # the detail stays, for the operator


def test_a_card_error_keeps_stripes_customer_facing_message() -> None:
    decline = stripe.CardError("Your card has insufficient funds.", None, "card_declined")
    assert _failure(decline).public_message == "Your card has insufficient funds."


def test_stripe_should_retry_header_wins() -> None:
    retry = stripe.InvalidRequestError("busy", None, headers={"stripe-should-retry": "true"})
    assert _failure(retry).permanent is False
    final = stripe.APIError("no", http_status=500, headers={"stripe-should-retry": "false"})
    assert _failure(final).permanent is True


def test_idempotency_key_is_stable_per_payment() -> None:
    payment = Payment(UUID(int=1), 2500, "USD", None, "pending_intent", None)
    again = Payment(UUID(int=1), 2500, "USD", "other", "pending_intent", None)
    other = Payment(UUID(int=2), 2500, "USD", None, "pending_intent", None)
    assert idempotency_key(payment) == idempotency_key(again)
    assert idempotency_key(payment) != idempotency_key(other)
    assert str(payment.id) in idempotency_key(payment)


@pytest.mark.parametrize(
    ("error", "retry_now"),
    [
        (stripe.APIConnectionError("connection reset"), True),
        (stripe.APIError("internal error", http_status=500), True),
        (stripe.APIError("lock timeout", http_status=409), True),
        (stripe.RateLimitError("Too many requests", http_status=429), False),
        (stripe.CardError("Your card was declined.", None, "card_declined"), False),
        (stripe.APIError("no", http_status=503, headers={"stripe-should-retry": "false"}), False),
        (
            stripe.RateLimitError("lock", http_status=429, headers={"stripe-should-retry": "true"}),
            True,
        ),
    ],
)
def test_which_failures_are_repeated_at_once(error: stripe.StripeError, retry_now: bool) -> None:
    assert _failure(error).retry_now is retry_now
