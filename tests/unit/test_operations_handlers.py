"""The capture, cancel and refund jobs' decisions that need no Stripe call: nothing is
asked of Stripe for a request already answered, and a request that cannot be carried out
fails permanently with words for its caller. With Stripe: tests/integration/
test_operations.py."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID, uuid4

import pytest

from worker.handlers import IntentMaker
from worker.jobs import JobFailure
from worker.models import (
    Job,
    ObservedIntent,
    ObservedRefund,
    OperationJob,
    OperationResult,
    RefundJob,
    RefundResult,
)
from worker.operations import CancelPayment, CapturePayment, CreateRefund
from worker.stripe_gateway import StripeGateway, StripeSettings

# Port 9 on loopback refuses: a handler that called Stripe here would fail loudly.
UNREACHABLE = StripeGateway(
    StripeSettings("sk_test_x", "http://127.0.0.1:9", connect_timeout=0.5, read_timeout=0.5)
)
NOW = datetime.now(UTC)


class Requests:
    """The rows a held job finds (or None: not held); finishing is never reached here."""

    def __init__(self, found: Any = None) -> None:
        self._found = found

    def job_operation_get(self, job: Job) -> OperationJob | None:
        return self._found  # type: ignore[no-any-return]

    def job_refund_get(self, job: Job) -> RefundJob | None:
        return self._found  # type: ignore[no-any-return]

    def observation_token(self) -> datetime:
        return datetime.now(UTC)

    def job_operation_finish(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> OperationResult:
        raise AssertionError("nothing to finish")

    def job_refund_finish(self, job: Job, token: datetime, refund: ObservedRefund) -> RefundResult:
        raise AssertionError("nothing to finish")


def job(kind: str, attempt: int = 1) -> Job:
    return Job(7, kind, {}, attempt, 5, 1, NOW, NOW)


def operation(
    kind: str = "capture",
    status: str = "requested",
    payment_status: str = "requires_capture",
    intent: str | None = "pi_1",
    currency: str = "USD",
) -> OperationJob:
    return OperationJob(
        operation_id=uuid4(),
        operation=kind,
        amount=None,
        reason=None,
        operation_status=status,
        payment_id=uuid4(),
        payment_status=payment_status,
        payment_amount=2500,
        currency=currency,
        description="d",
        capture_method="manual",
        provider_payment_id=intent,
        payment_created_at=NOW,
    )


def refund(status: str = "pending_refund", intent: str | None = "pi_1") -> RefundJob:
    return RefundJob(
        refund_id=uuid4(),
        amount=750,
        currency="USD",
        reason=None,
        refund_status=status,
        provider_refund_id=None if status == "pending_refund" else "re_1",
        payment_id=uuid4(),
        provider_payment_id=intent,
        refund_created_at=NOW,
    )


def capture(found: Any) -> CapturePayment:
    return CapturePayment(Requests(found), UNREACHABLE)


def cancel(found: Any) -> CancelPayment:
    return CancelPayment(Requests(found), UNREACHABLE, IntentMaker(UNREACHABLE).obtain, "USD")


def create_refund(found: Any) -> CreateRefund:
    return CreateRefund(Requests(found), UNREACHABLE)


@pytest.mark.parametrize(
    ("handler", "kind"),
    [(capture, "capture_payment"), (cancel, "cancel_payment"), (create_refund, "create_refund")],
)
def test_a_job_not_held_is_permanent(handler: Any, kind: str) -> None:
    with pytest.raises(JobFailure, match="not held") as err:
        handler(None).run(job(kind))
    assert err.value.permanent
    assert err.value.caller_message is None


@pytest.mark.parametrize("status", ["succeeded", "failed"])
def test_an_answered_operation_is_done_without_stripe(status: str) -> None:
    op = operation(status=status)
    done = capture(op).run(job("capture_payment"))
    assert done.complete is None
    assert done.context["operation_id"] == str(op.operation_id)
    assert cancel(operation("cancel", status)).run(job("cancel_payment")).complete is None


@pytest.mark.parametrize("status", ["pending", "requires_action", "succeeded", "failed"])
def test_a_refund_stripe_has_is_done_without_stripe(status: str) -> None:
    done = create_refund(refund(status)).run(job("create_refund", attempt=3))
    assert done.complete is None


def test_an_operation_of_the_other_kind_is_refused() -> None:
    with pytest.raises(JobFailure, match="is a cancel") as err:
        capture(operation("cancel")).run(job("capture_payment"))
    assert err.value.permanent


def test_a_capture_without_an_intent_fails_with_words_for_its_caller() -> None:
    with pytest.raises(JobFailure) as err:
        capture(operation(payment_status="pending_intent", intent=None)).run(job("capture_payment"))
    assert err.value.permanent
    assert err.value.caller_message == "the payment is pending_intent and has no PaymentIntent"


def test_a_cancel_of_a_failed_payment_without_an_intent_has_nothing_to_cancel() -> None:
    op = operation("cancel", payment_status="failed", intent=None)
    with pytest.raises(JobFailure, match="nothing to cancel") as err:
        cancel(op).run(job("cancel_payment"))
    assert err.value.permanent
    assert err.value.caller_message == "the payment is failed and has no PaymentIntent"


def test_a_cancel_in_another_currency_creates_no_intent() -> None:
    op = operation("cancel", payment_status="pending_intent", intent=None, currency="EUR")
    with pytest.raises(JobFailure, match="EUR") as err:
        cancel(op).run(job("cancel_payment"))
    assert err.value.permanent
    assert err.value.caller_message is None


def test_a_refund_without_an_intent_fails_with_words_for_its_caller() -> None:
    with pytest.raises(JobFailure) as err:
        create_refund(refund(intent=None)).run(job("create_refund"))
    assert (err.value.permanent, err.value.caller_message) == (
        True,
        "the payment has no PaymentIntent",
    )


@pytest.mark.parametrize(
    ("handler", "found", "kind"),
    [
        (capture, operation(), "capture_payment"),
        (cancel, operation("cancel", payment_status="pending"), "cancel_payment"),
        # A cancel still waiting for its intent goes through the create job's logic.
        (
            cancel,
            operation("cancel", payment_status="pending_intent", intent=None),
            "cancel_payment",
        ),
        (create_refund, refund(), "create_refund"),
    ],
)
def test_unreachable_stripe_is_transient_and_has_no_words_for_the_caller(
    handler: Any, found: Any, kind: str
) -> None:
    with pytest.raises(JobFailure) as err:
        handler(found).run(job(kind))
    assert not err.value.permanent
    assert err.value.caller_message is None
    assert UUID(str(err.value.context["payment_id"])) == found.payment_id
