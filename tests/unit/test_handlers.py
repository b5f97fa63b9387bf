"""CreatePaymentIntent's decisions that need no Stripe call."""

from __future__ import annotations

from datetime import UTC, datetime
from uuid import UUID, uuid4

import pytest

from worker.handlers import CreatePaymentIntent, Done, JobFailure, caller_reason
from worker.models import Job, Payment
from worker.stripe_gateway import StripeGateway, StripeSettings


class Payments:
    def __init__(self, *payments: Payment) -> None:
        self._by_id = {p.id: p for p in payments}

    def job_payment_get(self, job: Job) -> Payment | None:
        """The payment the job's args name, as the database finds it for a held job."""
        return self._by_id.get(UUID(str(job.args["payment_id"])))


# Port 9 on loopback refuses: a handler that called Stripe here would fail loudly.
UNREACHABLE = StripeGateway(
    StripeSettings("sk_test_x", "http://127.0.0.1:9", connect_timeout=0.5, read_timeout=0.5)
)


def job(args: dict[str, object]) -> Job:
    now = datetime.now(UTC)
    return Job(1, "create_payment_intent", args, 1, 5, 1, now, now)


def payment(status: str = "pending_intent", currency: str = "USD") -> Payment:
    return Payment(uuid4(), 2500, currency, "d", status, None)


def test_missing_payment_is_permanent() -> None:
    handler = CreatePaymentIntent(Payments(), UNREACHABLE, "USD")
    with pytest.raises(JobFailure) as err:
        handler.work(job({"payment_id": str(uuid4())}))
    assert err.value.permanent
    assert "does not exist" in err.value.message


@pytest.mark.parametrize("args", [{}, {"payment_id": "nope"}, {"payment_id": None}])
def test_bad_args_are_permanent(args: dict[str, object]) -> None:
    handler = CreatePaymentIntent(Payments(), UNREACHABLE, "USD")
    with pytest.raises(JobFailure) as err:
        handler.work(job(args))
    assert err.value.permanent
    assert "no valid payment_id" in err.value.message


@pytest.mark.parametrize("status", ["pending", "succeeded", "failed", "canceled"])
def test_payment_past_pending_intent_is_done_without_stripe(status: str) -> None:
    p = payment(status)
    handler = CreatePaymentIntent(Payments(p), UNREACHABLE, "USD")
    assert handler.work(job({"payment_id": str(p.id)})) == Done(payment_id=p.id)


def test_currency_mismatch_fails_the_payment_uncharged() -> None:
    p = payment(currency="EUR")
    handler = CreatePaymentIntent(Payments(p), UNREACHABLE, "USD")
    with pytest.raises(JobFailure) as err:
        handler.work(job({"payment_id": str(p.id)}))
    assert err.value.permanent
    assert err.value.payment_id == p.id
    assert "EUR" in err.value.message
    assert "not charged" in err.value.message
    # Which currencies this worker is set up for is the operator's business: no
    # caller message, so the given-up effect writes caller_reason's words.
    assert err.value.caller_message is None


def test_unreachable_stripe_is_transient() -> None:
    p = payment()
    handler = CreatePaymentIntent(Payments(p), UNREACHABLE, "USD")
    with pytest.raises(JobFailure) as err:
        handler.work(job({"payment_id": str(p.id)}))
    assert not err.value.permanent
    assert err.value.payment_id == p.id


def test_the_caller_reason_names_the_payment_and_nothing_else() -> None:
    p = payment()
    failure = JobFailure("Invalid API Key provided: sk_test_****9999", permanent=True)
    assert failure.caller_message is None
    assert caller_reason(p.id) == (
        f"the payment could not be created (payment {p.id}); the operator has the details"
    )


def test_a_public_message_is_what_the_core_may_show_the_caller() -> None:
    """The executor scrubs it before it is stored (test_executor.py,
    test_a_card_error_message_is_scrubbed_before_the_caller_sees_it)."""
    failure = JobFailure("detail", permanent=True, public_message="Your card was declined.")
    assert failure.caller_message == "Your card was declined."
    assert failure.message == "detail"
