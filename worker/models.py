"""Plain values passed between the store, the handlers and the Stripe gateway."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    args: dict[str, Any]
    attempt: int
    max_attempts: int
    priority: int
    scheduled_at: datetime
    created_at: datetime
    # The claim's proof of holding the job (payments.job_lease): every outcome
    # presents it. None for a job this process did not claim.
    lease_token: UUID | None = field(default=None, repr=False)


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


@dataclass(frozen=True)
class QueueSettings:
    """The database's side of the agreement with the worker (payments.config)."""

    currency: str
    queue: str
