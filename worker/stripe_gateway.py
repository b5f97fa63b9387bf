"""The only module that talks to Stripe, through the official SDK."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass

import stripe
from stripe.params import PaymentIntentCreateParams

from worker import telemetry
from worker.models import Payment, PaymentIntent

# Errors Stripe will answer the same way however often we ask: the payment
# fails at once. Everything else (connection, timeout, 5xx, 409, 429) is
# worth another attempt with the same idempotency key.
_PERMANENT = (
    stripe.CardError,
    stripe.InvalidRequestError,
    stripe.AuthenticationError,
    stripe.PermissionError,
    stripe.IdempotencyError,
)


# Waits before the retries within one attempt (Stripe's SDK uses the same).
_RETRY_WAITS = (0.5, 1.0, 2.0, 2.0, 2.0)


class StripeFailure(Exception):
    """A failed Stripe call; `message` is Stripe's own words, for the operator.

    `public_message` is what the payer may read: Stripe's customer-facing text
    of a card error (a decline, an expired card), None for every other
    failure, whose words are about our account, our request or the network.
    `retry_now`: worth repeating at once within the attempt (a dropped
    connection, a timeout, 409, 5xx); otherwise a transient failure waits
    for the queue's backoff (429), and a permanent one is final."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        kind: str,
        request_id: str | None,
        retry_now: bool = False,
        public_message: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.public_message = public_message
        self.permanent = permanent
        self.kind = kind
        self.request_id = request_id
        self.retry_now = retry_now and not permanent


@dataclass(frozen=True)
class StripeSettings:
    api_key: str
    api_base: str | None
    connect_timeout: float
    read_timeout: float
    network_retries: int = 2


def idempotency_key(payment: Payment) -> str:
    """One key per payment for every attempt: Stripe replays instead of creating twice."""
    return f"payment-worker:create_payment_intent:{payment.id}"


class StripeGateway:
    def __init__(self, settings: StripeSettings, stop: threading.Event | None = None) -> None:
        self._client = stripe.StripeClient(
            settings.api_key,
            base_addresses={"api": settings.api_base} if settings.api_base else {},
            http_client=stripe.RequestsClient(
                timeout=(settings.connect_timeout, settings.read_timeout)
            ),
            # Our own loop retries (below), so that each failed request is
            # counted and timed; the SDK's would hide them.
            max_network_retries=0,
        )
        self._retries = settings.network_retries
        # Set when the worker stops: a retry's pause is not waited out then.
        self._stop = stop or threading.Event()
        self.last_duration = 0.0

    def create_payment_intent(self, payment: Payment) -> PaymentIntent:
        """Creates the payment's intent, retrying a momentary fault at once.

        Stripe's own advice: a dropped connection, a timeout, a 409 or a 5xx
        is repeated with the same idempotency key (after 0.5 s, then 1 s).
        What still fails is the job's to retry, with the queue's backoff."""
        params: PaymentIntentCreateParams = {
            "amount": payment.amount,
            "currency": payment.currency.lower(),
            "metadata": {"payment_id": str(payment.id)},
        }
        if payment.description is not None:
            params["description"] = payment.description
        retry = 0
        while True:
            try:
                return self._create_once(payment, params)
            except StripeFailure as failure:
                if not failure.retry_now or retry >= self._retries:
                    raise
                # A stopping worker gives the failure to the queue at once rather
                # than pause: the job is retried after its backoff, with this key.
                if self._stop.wait(_RETRY_WAITS[min(retry, len(_RETRY_WAITS) - 1)]):
                    raise
            retry += 1

    def _create_once(self, payment: Payment, params: PaymentIntentCreateParams) -> PaymentIntent:
        started = time.perf_counter()
        outcome = "error"
        try:
            intent = self._client.v1.payment_intents.create(
                params, {"idempotency_key": idempotency_key(payment)}
            )
            outcome = "success"
        except stripe.StripeError as exc:
            telemetry.STRIPE_ERRORS.labels(type(exc).__name__).inc()
            raise _failure(exc) from exc
        finally:
            self.last_duration = time.perf_counter() - started
            telemetry.STRIPE_REQUEST_DURATION.labels("create_payment_intent", outcome).observe(
                self.last_duration
            )
        if intent.client_secret is None:
            raise StripeFailure(
                "Stripe returned a PaymentIntent without client_secret",
                permanent=False,
                kind="api_error",
                request_id=intent.last_response.request_id if intent.last_response else None,
            )
        return PaymentIntent(
            payment_id=payment.id,
            provider_payment_id=intent.id,
            client_secret=intent.client_secret,
            request_id=intent.last_response.request_id if intent.last_response else None,
        )


def _failure(exc: stripe.StripeError) -> StripeFailure:
    permanent = isinstance(exc, _PERMANENT)
    should_retry = (exc.headers or {}).get("stripe-should-retry")
    if should_retry == "false":
        permanent = True
    elif should_retry == "true":
        permanent = False
    status = exc.http_status or 0
    retry_now = isinstance(exc, stripe.APIConnectionError) or (
        isinstance(exc, stripe.APIError) and (status == 409 or status >= 500)
    )
    if should_retry is not None:
        retry_now = should_retry == "true"
    message = exc.user_message or type(exc).__name__
    return StripeFailure(
        message,
        permanent=permanent,
        kind=type(exc).__name__,
        request_id=exc.request_id,
        retry_now=retry_now,
        # Only a card error is about the payer's card; the others (a wrong key, a bad
        # parameter, a permission) would tell the caller about our account.
        public_message=exc.user_message if isinstance(exc, stripe.CardError) else None,
    )
