"""Plain values passed between the store, the handlers and the Stripe gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from uuid import UUID

# The queue core's job, re-exported for the modules that pass it along with payments.
from worker.jobs import Job

__all__ = [
    "Job",
    "LifecycleJob",
    "Observation",
    "ObservedIntent",
    "Payment",
    "PaymentIntent",
    "QueueSettings",
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


@dataclass(frozen=True)
class Observation:
    """What writing an observation did: `result` written, stale, refused or ignored."""

    completed: bool
    result: str | None
    reason: str | None
    old_status: str | None
    new_status: str | None
    event_age_seconds: float | None
