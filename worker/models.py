"""Plain values passed between the store, the handlers and the Stripe gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from uuid import UUID

# The queue core's job, re-exported for the modules that pass it along with payments.
from worker.jobs import Job

__all__ = [
    "Job",
    "LifecycleJob",
    "Observation",
    "ObservedIntent",
    "ObservedRefund",
    "OperationJob",
    "OperationResult",
    "Payment",
    "PaymentIntent",
    "QueueSettings",
    "RefundJob",
    "RefundResult",
    "RescuedJob",
]


@dataclass(frozen=True)
class Payment:
    id: UUID
    amount: int
    currency: str
    description: str | None
    status: str
    provider_payment_id: str | None
    # 'automatic' or 'manual' (captured later by a capture_payment job).
    capture_method: str = "automatic"
    created_at: datetime | None = None


@dataclass(frozen=True)
class PaymentIntent:
    """What the worker keeps of a created PaymentIntent."""

    payment_id: UUID
    provider_payment_id: str
    client_secret: str = field(repr=False)
    request_id: str | None = None


@dataclass(frozen=True)
class RescuedJob:
    id: int
    state: str
    kind: str
    attempt: int
    # When it runs again (retryable), or None (discarded).
    retry_in_seconds: float | None


@dataclass(frozen=True)
class QueueSettings:
    """The database's side of the agreement with the worker (payments.config)."""

    currency: str
    queue: str


@dataclass(frozen=True)
class LifecycleJob:
    """What an apply_stripe_event or sync_payment job is about: its payment and, for an
    event, the event and the PaymentIntent it names."""

    payment_id: UUID
    status: str
    provider_payment_id: str | None
    event_id: str | None = None
    event_type: str | None = None
    event_outcome: str | None = None
    event_intent_id: str | None = None


@dataclass(frozen=True)
class ObservedIntent:
    """A PaymentIntent as Stripe reports it now (what the lifecycle keeps of it)."""

    id: str
    status: str
    amount: int
    currency: str
    amount_received: int | None
    metadata_payment_id: str | None
    last_payment_error: dict[str, str | None] | None
    client_secret: str | None = field(default=None, repr=False)
    request_id: str | None = None
    amount_capturable: int | None = None
    # Unix seconds: when an uncaptured authorisation expires (the latest charge's card).
    capture_before: int | None = None
    cancellation_reason: str | None = None
    # The intent's refunds as listed with it; None when they were not looked at.
    refunds: tuple[ObservedRefund, ...] | None = None


@dataclass(frozen=True)
class ObservedRefund:
    """A Refund as Stripe reports it; `metadata_refund_id` names our row, if we made it."""

    id: str
    status: str
    amount: int
    currency: str
    reason: str | None
    failure_reason: str | None
    metadata_refund_id: str | None
    payment_intent: str | None
    request_id: str | None = None


@dataclass(frozen=True)
class OperationJob:
    """What a capture_payment or cancel_payment job is about (payments.job_operation_get)."""

    operation_id: UUID
    operation: str
    amount: int | None
    reason: str | None
    operation_status: str
    payment_id: UUID
    payment_status: str
    payment_amount: int
    currency: str
    description: str | None
    capture_method: str
    provider_payment_id: str | None
    payment_created_at: datetime
    # Stripe's intent must be shown to the database before the call (job_operation_check):
    # a cancel no operator asked for, allowed only while the payment is unpaid.
    check_first: bool = False

    def payment(self) -> Payment:
        return Payment(
            id=self.payment_id,
            amount=self.payment_amount,
            currency=self.currency,
            description=self.description,
            status=self.payment_status,
            provider_payment_id=self.provider_payment_id,
            capture_method=self.capture_method,
            created_at=self.payment_created_at,
        )


@dataclass(frozen=True)
class OperationResult:
    """What payments.job_operation_finish (or job_operation_check) did; `operation_status`
    'mismatch': the payment holds another intent than the one given (the job is kept, to be
    retried). A check that allows the call: not completed, 'requested'."""

    completed: bool
    operation_status: str | None
    reason: str | None
    old_status: str | None
    new_status: str | None


@dataclass(frozen=True)
class RefundJob:
    """What a create_refund job is about (payments.job_refund_get)."""

    refund_id: UUID
    amount: int
    currency: str
    reason: str | None
    refund_status: str
    provider_refund_id: str | None
    payment_id: UUID
    provider_payment_id: str | None
    refund_created_at: datetime


@dataclass(frozen=True)
class RefundResult:
    completed: bool
    result: str | None
    refund_status: str | None


@dataclass(frozen=True)
class Observation:
    """What writing an observation did: `result` written, stale, refused or ignored."""

    completed: bool
    result: str | None
    reason: str | None
    old_status: str | None
    new_status: str | None
    event_age_seconds: float | None
