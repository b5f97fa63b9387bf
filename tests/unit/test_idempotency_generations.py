"""Which idempotency key a payment's attempt sends, and when a 500 is a replay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from uuid import UUID

import pytest
import stripe

from worker.models import Payment
from worker.stripe_gateway import _failure, idempotency_key, key_generation

PAYMENT = Payment(UUID(int=7), 2500, "USD", None, "pending_intent", None)
T0 = datetime(2026, 12, 1, tzinfo=UTC)


def test_generation_zero_keeps_the_key_of_payments_made_before_generations() -> None:
    assert idempotency_key(PAYMENT) == f"payment-worker:create_payment_intent:{PAYMENT.id}"
    assert idempotency_key(PAYMENT, 0) == idempotency_key(PAYMENT)
    assert idempotency_key(PAYMENT, 2) == f"payment-worker:create_payment_intent:{PAYMENT.id}:2"


@pytest.mark.parametrize(
    ("age", "generation"),
    [
        (timedelta(0), 0),
        (timedelta(hours=22, minutes=59, seconds=59), 0),
        (timedelta(hours=23), 1),
        (timedelta(hours=45, minutes=59), 1),
        (timedelta(hours=46), 2),
        (timedelta(seconds=-30), 0),  # the database's clock a little ahead of ours
    ],
)
def test_a_key_is_never_sent_23_h_after_its_generation_began(
    age: timedelta, generation: int
) -> None:
    assert key_generation(T0, T0 + age) == generation


def _server_error(status: int, headers: dict[str, str]) -> stripe.APIError:
    return stripe.APIError("An unknown error occurred.", http_status=status, headers=headers)


def test_a_replayed_5xx_is_marked_and_not_asked_again_at_once() -> None:
    replayed = _failure(_server_error(500, {"idempotent-replayed": "true"}))
    assert (replayed.replayed_server_error, replayed.retry_now, replayed.permanent) == (
        True,
        False,
        False,
    )
    fresh = _failure(_server_error(500, {}))
    assert (fresh.replayed_server_error, fresh.retry_now) == (False, True)
    # A replayed 4xx is Stripe's final word anyway, not a hidden intent.
    conflict = _failure(_server_error(409, {"idempotent-replayed": "true"}))
    assert conflict.replayed_server_error is False
