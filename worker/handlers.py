"""Job handlers: what each job kind does. They never run SQL: they read through
a narrow interface and return what should be stored."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol
from uuid import UUID

from common.jsonlog import redact
from worker.models import Job, Payment, PaymentIntent
from worker.stripe_gateway import StripeFailure, StripeGateway


class PaymentReader(Protocol):
    def job_payment_get(self, job: Job) -> Payment | None: ...


def caller_reason(payment_id: UUID) -> str:
    """What the caller reads of a failure whose detail is for the operator only.

    The RPC raises it as `Payment intent creation failed: <this>`; keep it stable."""
    return f"the payment could not be created (payment {payment_id}); the operator has the details"


class JobFailure(Exception):
    """The job did not succeed. A permanent failure is not retried; `payment_id`
    names the payment to mark failed when the job is given up.

    `message` is the detail, for the job's errors[] and the log; `public_message`
    is what the caller may read instead of `caller_reason` (a card decline)."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        payment_id: UUID | None = None,
        request_id: str | None = None,
        public_message: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent
        self.payment_id = payment_id
        self.request_id = request_id
        self.public_message = public_message

    def caller_message(self, payment_id: UUID) -> str:
        """The payment's error_message: scrubbed as a log line is, never the detail."""
        return redact(self.public_message or caller_reason(payment_id))


@dataclass(frozen=True)
class Done:
    """The job is finished; `intent` is to be stored on its payment, if any."""

    payment_id: UUID | None = None
    intent: PaymentIntent | None = None


class CreatePaymentIntent:
    """kind `create_payment_intent`, args `{"payment_id": uuid}`."""

    kind = "create_payment_intent"

    def __init__(self, payments: PaymentReader, gateway: StripeGateway, currency: str) -> None:
        self._payments = payments
        self._gateway = gateway
        self._currency = currency

    def work(self, job: Job) -> Done:
        payment_id = _payment_id(job)
        payment = self._payments.job_payment_get(job)
        if payment is None:
            raise JobFailure(f"payment {payment_id} does not exist", permanent=True)
        if payment.status != "pending_intent":
            # Already answered (or cancelled): nothing to create, never twice.
            return Done(payment_id=payment.id)
        if payment.currency != self._currency:
            raise JobFailure(
                f"payment is in {payment.currency} but this worker charges in "
                f"{self._currency} (PAYMENT_CURRENCY); not charged",
                permanent=True,
                payment_id=payment.id,
            )
        try:
            intent = self._gateway.create_payment_intent(payment)
        except StripeFailure as exc:
            raise JobFailure(
                exc.message,
                permanent=exc.permanent,
                payment_id=payment.id,
                request_id=exc.request_id,
                public_message=exc.public_message,
            ) from exc
        return Done(payment_id=payment.id, intent=intent)


def _payment_id(job: Job) -> UUID:
    raw = job.args.get("payment_id")
    try:
        return UUID(str(raw))
    except ValueError:
        raise JobFailure(f"job args have no valid payment_id: {raw!r}", permanent=True) from None
