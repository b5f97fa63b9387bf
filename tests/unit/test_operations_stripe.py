"""Capture, cancel and refunds on the worker's side, without Stripe: their idempotency keys,
which refusals reach the caller, and how an intent or a refund is shaped for the schema."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest
import stripe

from worker import operations
from worker.models import ObservedRefund
from worker.store import intent_json, refund_json
from worker.stripe_gateway import (
    _failure,
    cancel_key,
    capture_key,
    key_generation,
    observed_intent_from,
    observed_refund,
    refund_key,
)

OPERATION = UUID(int=11)
REFUND = UUID(int=12)


def test_the_keys_are_the_contracts() -> None:
    assert capture_key(OPERATION) == f"payment-worker:capture_payment:{OPERATION}"
    assert cancel_key(OPERATION, "pi_1") == f"payment-worker:cancel_payment:{OPERATION}:pi_1"
    assert refund_key(REFUND) == f"payment-worker:create_refund:{REFUND}"
    assert refund_key(REFUND, 0) == refund_key(REFUND)
    assert refund_key(REFUND, 3) == f"payment-worker:create_refund:{REFUND}:3"


def test_a_cancel_key_is_per_intent_and_every_key_per_request() -> None:
    assert cancel_key(OPERATION, "pi_1") != cancel_key(OPERATION, "pi_2")
    assert capture_key(OPERATION) != capture_key(UUID(int=13))
    assert refund_key(REFUND) != refund_key(UUID(int=13))
    # Never a create key: another request's replay would answer.
    assert len({capture_key(OPERATION), cancel_key(OPERATION, "pi_1"), refund_key(OPERATION)}) == 3


@pytest.mark.parametrize(
    ("error", "words"),
    [
        (
            stripe.InvalidRequestError(
                "Refund amount ($7.50) is greater than unrefunded amount on charge ($5.00)",
                "amount",
                code="amount_too_large",
            ),
            "Refund amount ($7.50) is greater than unrefunded amount on charge ($5.00)",
        ),
        (
            stripe.CardError("Your card was declined.", None, "card_declined"),
            "Your card was declined.",
        ),
        (stripe.AuthenticationError("Invalid API Key provided: sk_test_****9999"), None),
        (stripe.PermissionError("The provided key does not have access to acct_1"), None),
        (stripe.IdempotencyError("Keys for idempotent requests can only be used once"), None),
        (stripe.APIError("internal error", http_status=500), None),
        (stripe.APIConnectionError("connection reset"), None),
        (stripe.RateLimitError("Too many requests", http_status=429), None),
        # Stripe says it may be asked again: not a refusal.
        (stripe.InvalidRequestError("busy", None, headers={"stripe-should-retry": "true"}), None),
    ],
)
def test_only_stripes_refusal_of_the_request_reaches_the_caller(
    error: stripe.StripeError, words: str | None
) -> None:
    failed = _failure(error)
    assert failed.refusal_message == words
    job_failure = operations.failure(failed, {"payment_id": "p"})
    assert job_failure.caller_message == words
    assert job_failure.permanent is failed.permanent
    assert job_failure.message == error.user_message  # the detail, for the operator


def test_a_refusal_names_its_request_in_the_log_context() -> None:
    error = stripe.InvalidRequestError("No such payment_intent: 'pi_x'", "intent")
    error.request_id = "req_123"  # type: ignore[misc]
    failed = operations.failure(_failure(error), {"refund_id": str(REFUND)})
    assert failed.context == {"refund_id": str(REFUND), "stripe_request_id": "req_123"}


def _intent(**changes: Any) -> dict[str, Any]:
    intent: dict[str, Any] = {
        "id": "pi_1",
        "object": "payment_intent",
        "status": "requires_capture",
        "amount": 2500,
        "currency": "usd",
        "amount_received": 0,
        "amount_capturable": 2500,
        "cancellation_reason": None,
        "client_secret": "pi_1_secret_x",
        "metadata": {"payment_id": "p-1"},
        "last_payment_error": None,
        "latest_charge": "ch_1",
    }
    return {**intent, **changes}


def test_an_expanded_charge_gives_the_authorisations_deadline() -> None:
    charge = {
        "id": "ch_1",
        "object": "charge",
        "payment_method_details": {"type": "card", "card": {"capture_before": 1_800_000_000}},
    }
    observed = observed_intent_from(_intent(latest_charge=charge), "req_1")
    assert (observed.capture_before, observed.amount_capturable) == (1_800_000_000, 2500)
    assert (observed.metadata_payment_id, observed.request_id) == ("p-1", "req_1")


@pytest.mark.parametrize(
    "charge",
    [
        "ch_1",  # not expanded (a stand-in that does not, or an older answer)
        None,  # no charge yet
        {"id": "ch_1", "payment_method_details": None},
        {"id": "ch_1", "payment_method_details": {"type": "us_bank_account"}},
        {"id": "ch_1", "payment_method_details": {"card": {"capture_before": None}}},
    ],
)
def test_without_a_cards_deadline_capture_before_is_none(charge: Any) -> None:
    assert observed_intent_from(_intent(latest_charge=charge), None).capture_before is None


def test_a_canceled_intent_keeps_stripes_reason_and_an_old_answer_its_gaps() -> None:
    canceled = observed_intent_from(
        _intent(status="canceled", amount_capturable=0, cancellation_reason="abandoned"), None
    )
    assert (canceled.status, canceled.cancellation_reason, canceled.amount_capturable) == (
        "canceled",
        "abandoned",
        0,
    )
    sparse = {"id": "pi_2", "status": "processing", "amount": 100, "currency": "usd"}
    observed = observed_intent_from(sparse, None)
    assert observed.amount_received is None
    assert observed.amount_capturable is None
    assert observed.metadata_payment_id is None
    assert observed.last_payment_error is None
    assert observed.refunds is None


def test_a_last_payment_error_keeps_three_fields() -> None:
    error = {"message": "declined", "code": "card_declined", "decline_code": "lost", "type": "x"}
    observed = observed_intent_from(_intent(last_payment_error=error), None)
    assert observed.last_payment_error == {
        "message": "declined",
        "code": "card_declined",
        "decline_code": "lost",
    }


def _refund(**changes: Any) -> dict[str, Any]:
    refund: dict[str, Any] = {
        "id": "re_1",
        "object": "refund",
        "amount": 750,
        "currency": "usd",
        "status": "pending",
        "reason": "requested_by_customer",
        "failure_reason": None,
        "metadata": {"refund_id": str(REFUND), "payment_id": "p-1"},
        "payment_intent": "pi_1",
        "charge": "ch_1",
    }
    return {**refund, **changes}


def test_a_refund_is_shaped_as_the_schema_reads_it() -> None:
    refund = observed_refund(_refund(), "req_9")
    assert refund.request_id == "req_9"
    assert refund_json(refund) == {
        "id": "re_1",
        "status": "pending",
        "amount": 750,
        "currency": "usd",
        "reason": "requested_by_customer",
        "failure_reason": None,
        "metadata_refund_id": str(REFUND),
        "payment_intent": "pi_1",
    }


def test_a_dashboard_refund_has_no_refund_id_and_an_expanded_intent_its_id() -> None:
    refund = observed_refund(_refund(metadata={}, payment_intent={"id": "pi_1"}), None)
    assert (refund.metadata_refund_id, refund.payment_intent) == (None, "pi_1")
    assert observed_refund(_refund(metadata=None, payment_intent=None), None).payment_intent is None


def test_refunds_not_looked_at_are_absent_from_the_observation() -> None:
    observed = observed_intent_from(_intent(status="succeeded"), "req_1")
    shaped = intent_json(observed)
    assert "refunds" not in shaped
    assert "request_id" not in shaped
    assert shaped["capture_before"] is None
    json.dumps(shaped)


def test_refunds_looked_at_are_a_list_even_when_empty() -> None:
    observed = observed_intent_from(_intent(status="succeeded"), None)
    assert intent_json(replace(observed, refunds=()))["refunds"] == []
    one = ObservedRefund("re_1", "succeeded", 750, "usd", None, None, None, "pi_1", "req_2")
    shaped = intent_json(replace(observed, refunds=(one,)))
    assert shaped["refunds"] == [refund_json(one)]
    assert "request_id" not in shaped["refunds"][0]
    json.dumps(shaped)


def test_the_client_secret_travels_only_in_the_json_never_in_repr() -> None:
    observed = observed_intent_from(_intent(), None)
    assert "secret" not in repr(observed)
    assert intent_json(observed)["client_secret"] == "pi_1_secret_x"


def test_key_generations_of_refunds_follow_the_refunds_creation() -> None:
    created = datetime(2026, 12, 1, tzinfo=UTC)
    assert key_generation(created, datetime(2026, 12, 1, 22, 59, tzinfo=UTC)) == 0
    assert refund_key(REFUND, key_generation(created, datetime(2026, 12, 2, 0, 0, tzinfo=UTC))) == (
        f"payment-worker:create_refund:{REFUND}:1"
    )
