"""Plain values passed between the store, the handlers and the Stripe gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

# The queue core's job, re-exported for the modules that pass it along with payments.
from worker.jobs import Job

__all__ = ["Job", "Payment", "PaymentIntent", "QueueSettings", "RescuedJob"]


@dataclass(frozen=True)
class Payment:
    id: UUID
    amount: int
    currency: str
    description: str | None
    status: str
    provider_payment_id: str | None


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
