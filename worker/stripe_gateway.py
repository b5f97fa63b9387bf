"""The only module that talks to Stripe, through the official SDK."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from functools import partial
from typing import Any, TypeVar
from uuid import UUID

import stripe
from stripe.params import (
    PaymentIntentCancelParams,
    PaymentIntentCaptureParams,
    PaymentIntentCreateParams,
    RefundCreateParams,
    RefundListParams,
)

from worker import telemetry
from worker.models import ObservedIntent, ObservedRefund, Payment, PaymentIntent, RefundJob

_T = TypeVar("_T")

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


# Stripe may forget an idempotency key once it is 24 hours old, and its search may lag
# up to an hour in an outage: a key is used for 23 h from the payment's first attempt at
# most, then the next generation's, after a search for what the old one made.
KEY_GENERATION_SECONDS = 23 * 3600.0


# The events the backfill lists: every PaymentIntent event, and those of refunds (a refund
# made in Stripe's dashboard is found through them). Exact names: Stripe's `types[]` takes
# no wildcard, and one list keeps the backfill's single cursor.
PAYMENT_EVENT_TYPES = (
    "payment_intent.amount_capturable_updated",
    "payment_intent.canceled",
    "payment_intent.created",
    "payment_intent.partially_funded",
    "payment_intent.payment_failed",
    "payment_intent.processing",
    "payment_intent.requires_action",
    "payment_intent.succeeded",
    "charge.refunded",
    "refund.created",
    "refund.failed",
    "refund.updated",
)


# Waits before the retries within one attempt (Stripe's SDK uses the same).
_RETRY_WAITS = (0.5, 1.0, 2.0, 2.0, 2.0)

# Every intent we read comes with its latest charge: an authorisation's deadline
# (capture_before) is on the charge's card details, not on the intent.
_EXPAND_CHARGE = ["latest_charge"]

# Pages of 100 refunds read for one intent at most (Stripe lists them newest first).
_MAX_REFUND_PAGES = 20


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
        replayed_server_error: bool = False,
        not_found: bool = False,
        refusal_message: str | None = None,
    ):
        super().__init__(message)
        self.message = message
        self.public_message = public_message
        # Stripe's words when it refused the request itself (a card error, an invalid
        # request: "amount too large", "already captured"); None for a failure about our
        # account or the network. An operator's operation shows them to its caller.
        self.refusal_message = refusal_message
        self.permanent = permanent
        self.kind = kind
        self.request_id = request_id
        self.retry_now = retry_now and not permanent
        # Stripe answered a 5xx it saved for this key: every retry with the key gets it.
        self.replayed_server_error = replayed_server_error
        # Stripe has no such object (404 resource_missing): asking again changes nothing.
        self.not_found = not_found


@dataclass(frozen=True)
class StripeSettings:
    api_key: str
    api_base: str | None
    connect_timeout: float
    read_timeout: float
    network_retries: int = 2


@dataclass(frozen=True)
class FoundIntent:
    """A PaymentIntent found by the payment's `metadata.payment_id`."""

    id: str
    amount: int
    currency: str
    status: str
    created: int
    client_secret: str | None = None
    request_id: str | None = None


def idempotency_key(payment: Payment, generation: int = 0) -> str:
    """The same key for every attempt of one generation: Stripe replays instead of
    creating twice. Generation 0 keeps the key of the payments made before generations."""
    base = f"payment-worker:create_payment_intent:{payment.id}"
    return base if generation == 0 else f"{base}:{generation}"


def capture_key(operation_id: UUID, generation: int = 0) -> str:
    """One capture operation, one capture at Stripe, however often it is asked. A key that
    answers a saved 5xx is followed by the next generation's (`…:<g>`): the intent's own
    state keeps it to one capture (an intent captured already refuses another)."""
    base = f"payment-worker:capture_payment:{operation_id}"
    return base if generation == 0 else f"{base}:{generation}"


def cancel_key(operation_id: UUID, intent_id: str, generation: int = 0) -> str:
    """Per intent too: an operation that finds the payment holds another intent than the
    one it canceled cancels that one with a key of its own. Generations as capture_key's."""
    base = f"payment-worker:cancel_payment:{operation_id}:{intent_id}"
    return base if generation == 0 else f"{base}:{generation}"


def refund_key(refund_id: UUID, generation: int = 0) -> str:
    """As the create key: fixed per generation, a new one every 23 h (key_generation)."""
    base = f"payment-worker:create_refund:{refund_id}"
    return base if generation == 0 else f"{base}:{generation}"


def key_generation(first_attempt: datetime, now: datetime) -> int:
    """Which generation's key a payment whose first attempt was at `first_attempt` uses:
    a new one every 23 h, so none is ever sent when it may be 24 h old."""
    return max(0, int((now - first_attempt).total_seconds() // KEY_GENERATION_SECONDS))


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

    def create_payment_intent(self, payment: Payment, generation: int = 0) -> PaymentIntent:
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
        if payment.capture_method == "manual":
            # Authorised only: a capture_payment job takes the money later.
            params["capture_method"] = "manual"
        retry = 0
        while True:
            try:
                return self._create_once(payment, params, generation)
            except StripeFailure as failure:
                if not failure.retry_now or retry >= self._retries:
                    raise
                # A stopping worker gives the failure to the queue at once rather
                # than pause: the job is retried after its backoff, with this key.
                if self._stop.wait(_RETRY_WAITS[min(retry, len(_RETRY_WAITS) - 1)]):
                    raise
            retry += 1

    def retrieve_payment_intent(self, intent_id: str) -> ObservedIntent:
        """The PaymentIntent as Stripe has it now, retried at once like a create. A 404
        raises StripeFailure with `not_found`."""
        return observed_intent(self._retrying(partial(self._retrieve_once, intent_id)))

    def capture_payment_intent(
        self,
        intent_id: str,
        amount_to_capture: int | None,
        operation_id: UUID,
        generation: int = 0,
    ) -> ObservedIntent:
        """Captures the authorisation: all that is capturable (None), or that much, the
        rest released. Retried at once like a create, with the operation's key."""
        params: PaymentIntentCaptureParams = {"expand": _EXPAND_CHARGE}
        if amount_to_capture is not None:
            params["amount_to_capture"] = amount_to_capture
        options: stripe.RequestOptions = {"idempotency_key": capture_key(operation_id, generation)}

        def capture() -> stripe.PaymentIntent:
            with _measured("capture_payment_intent"):
                return self._client.v1.payment_intents.capture(intent_id, params, options)

        return observed_intent(self._retrying(capture))

    def cancel_payment_intent(
        self, intent_id: str, reason: str | None, operation_id: UUID, generation: int = 0
    ) -> ObservedIntent:
        """Cancels the intent (an authorisation is released), with Stripe's
        cancellation_reason if given. Retried at once like a create."""
        params: PaymentIntentCancelParams = {"expand": _EXPAND_CHARGE}
        if reason is not None:
            params["cancellation_reason"] = reason
        options: stripe.RequestOptions = {
            "idempotency_key": cancel_key(operation_id, intent_id, generation)
        }

        def cancel() -> stripe.PaymentIntent:
            with _measured("cancel_payment_intent"):
                return self._client.v1.payment_intents.cancel(intent_id, params, options)

        return observed_intent(self._retrying(cancel))

    def create_refund(self, refund: RefundJob, generation: int = 0) -> ObservedRefund:
        """Refunds `refund.amount` of the payment's intent, our refund's id in its
        metadata (list_refunds finds it by that). Retried at once like a create."""
        if refund.provider_payment_id is None:
            raise ValueError(f"refund {refund.refund_id}: its payment has no PaymentIntent")
        params: RefundCreateParams = {
            "payment_intent": refund.provider_payment_id,
            "amount": refund.amount,
            "metadata": {"refund_id": str(refund.refund_id), "payment_id": str(refund.payment_id)},
        }
        if refund.reason is not None:
            params["reason"] = refund.reason
        options: stripe.RequestOptions = {
            "idempotency_key": refund_key(refund.refund_id, generation)
        }

        def create() -> stripe.Refund:
            with _measured("create_refund"):
                return self._client.v1.refunds.create(params, options)

        created = self._retrying(create)
        return observed_refund(created.to_dict(), _request_id(created))

    def list_refunds(self, intent_id: str) -> list[ObservedRefund]:
        """Every refund of the intent, newest first. Unlike search, Stripe's list is
        strongly consistent: a refund just made is in it."""
        refunds: list[ObservedRefund] = []
        cursor: str | None = None
        for _ in range(_MAX_REFUND_PAGES):
            params: RefundListParams = {"payment_intent": intent_id, "limit": 100}
            if cursor is not None:
                params["starting_after"] = cursor
            page = self._retrying(partial(self._list_refunds_page, params))
            request_id = _request_id(page)
            refunds.extend(observed_refund(item.to_dict(), request_id) for item in page.data)
            if not page.has_more or not page.data:
                return refunds
            cursor = page.data[-1].id
        raise StripeFailure(
            f"PaymentIntent {intent_id} has more than {100 * _MAX_REFUND_PAGES} refunds",
            permanent=True,
            kind="too_many_refunds",
            request_id=None,
        )

    def _list_refunds_page(self, params: RefundListParams) -> Any:
        with _measured("list_refunds"):
            return self._client.v1.refunds.list(params)

    def list_events(
        self,
        created_gte: int,
        *,
        starting_after: str | None = None,
        types: Sequence[str] = PAYMENT_EVENT_TYPES,
        max_pages: int = 10,
    ) -> tuple[list[dict[str, Any]], str | None]:
        """Stripe's events of `types` (Stripe's `types[]`: up to 20 exact names) created at
        or after `created_gte` (unix seconds), newest first, at most `max_pages` pages of
        100 from `starting_after`; and the id to continue after, None when the list was
        read to its end."""
        events: list[dict[str, Any]] = []
        cursor = starting_after
        for _ in range(max_pages):
            params: dict[str, Any] = {
                "types": list(types),
                "created": {"gte": created_gte},
                "limit": 100,
            }
            if cursor is not None:
                params["starting_after"] = cursor
            page = self._retrying(partial(self._list_events_page, params))
            events.extend(event.to_dict() for event in page.data)
            if not page.has_more or not page.data:
                return events, None
            cursor = page.data[-1].id
        return events, cursor

    def _list_events_page(self, params: dict[str, Any]) -> Any:
        with _measured("list_events"):
            return self._client.v1.events.list(params)  # type: ignore[arg-type]

    def _retrieve_once(self, intent_id: str) -> stripe.PaymentIntent:
        with _measured("retrieve_payment_intent"):
            return self._client.v1.payment_intents.retrieve(intent_id, {"expand": _EXPAND_CHARGE})

    def _retrying(self, call: Callable[[], _T]) -> _T:
        """A read, repeated at once after a momentary fault (as create is)."""
        retry = 0
        while True:
            try:
                return call()
            except StripeFailure as failure:
                if not failure.retry_now or retry >= self._retries:
                    raise
                if self._stop.wait(_RETRY_WAITS[min(retry, len(_RETRY_WAITS) - 1)]):
                    raise
            retry += 1

    def find_payment_intents(self, payment: Payment) -> list[FoundIntent]:
        """The intents whose `metadata.payment_id` is this payment's, through Stripe's
        search (eventually consistent: one made in the last minute may be missing). A
        dropped connection or a 5xx is asked again at once, once."""
        query = f"metadata['payment_id']:'{payment.id}'"
        for retry in range(2):
            try:
                with _measured("search_payment_intents"):
                    result = self._client.v1.payment_intents.search({"query": query, "limit": 100})
            except StripeFailure as failure:
                if retry or not failure.retry_now:
                    raise
                continue
            request_id = result.last_response.request_id if result.last_response else None
            return [
                FoundIntent(
                    id=item.id,
                    amount=int(item.amount),
                    currency=str(item.currency),
                    status=str(item.status),
                    created=int(item.created),
                    client_secret=item.client_secret,
                    request_id=request_id,
                )
                for item in result.data
                # Search matched on it; a second look costs nothing and guards the adoption.
                if "payment_id" in item.metadata and item.metadata["payment_id"] == str(payment.id)
            ]
        raise AssertionError("unreachable")  # pragma: no cover

    def _create_once(
        self, payment: Payment, params: PaymentIntentCreateParams, generation: int
    ) -> PaymentIntent:
        with _measured("create_payment_intent"):
            intent = self._client.v1.payment_intents.create(
                params, {"idempotency_key": idempotency_key(payment, generation)}
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


def observed_intent(intent: stripe.PaymentIntent) -> ObservedIntent:
    """What the lifecycle keeps of an intent Stripe answered with."""
    return observed_intent_from(intent.to_dict(), _request_id(intent))


def observed_intent_from(data: Mapping[str, Any], request_id: str | None) -> ObservedIntent:
    """The same from the intent as a plain dict. `latest_charge` may be expanded (the
    charge, with its card's capture_before) or only the charge's id."""
    error = data.get("last_payment_error")
    metadata = data.get("metadata") or {}
    charge = data.get("latest_charge")
    card = None
    if isinstance(charge, Mapping):
        card = (charge.get("payment_method_details") or {}).get("card")
    capture_before = card.get("capture_before") if isinstance(card, Mapping) else None
    return ObservedIntent(
        id=str(data["id"]),
        status=str(data["status"]),
        amount=int(data["amount"]),
        currency=str(data["currency"]),
        amount_received=_int_or_none(data.get("amount_received")),
        metadata_payment_id=str(metadata["payment_id"]) if "payment_id" in metadata else None,
        last_payment_error=None
        if not isinstance(error, Mapping)
        else {
            "message": error.get("message"),
            "code": error.get("code"),
            "decline_code": error.get("decline_code"),
        },
        client_secret=data.get("client_secret"),
        request_id=request_id,
        amount_capturable=_int_or_none(data.get("amount_capturable")),
        capture_before=_int_or_none(capture_before),
        cancellation_reason=data.get("cancellation_reason"),
    )


def observed_refund(data: Mapping[str, Any], request_id: str | None) -> ObservedRefund:
    """What the worker keeps of a refund (a plain dict of Stripe's Refund)."""
    metadata = data.get("metadata") or {}
    intent = data.get("payment_intent")
    if isinstance(intent, Mapping):  # expanded by whoever asked
        intent = intent.get("id")
    return ObservedRefund(
        id=str(data["id"]),
        status=str(data["status"]),
        amount=int(data["amount"]),
        currency=str(data["currency"]),
        reason=data.get("reason"),
        failure_reason=data.get("failure_reason"),
        metadata_refund_id=str(metadata["refund_id"]) if "refund_id" in metadata else None,
        payment_intent=None if intent is None else str(intent),
        request_id=request_id,
    )


def _int_or_none(value: Any) -> int | None:
    return None if value is None else int(value)


def _request_id(answer: Any) -> str | None:
    response = answer.last_response
    return response.request_id if response is not None else None


@contextmanager
def _measured(operation: str) -> Iterator[None]:
    """One Stripe request: its duration by outcome, its error by SDK class, and an
    SDK error raised as our StripeFailure."""
    started = time.perf_counter()
    outcome = "error"
    try:
        yield
        outcome = "success"
    except stripe.StripeError as exc:
        telemetry.STRIPE_ERRORS.labels(type(exc).__name__).inc()
        raise _failure(exc) from exc
    finally:
        telemetry.STRIPE_REQUEST_DURATION.labels(operation, outcome).observe(
            time.perf_counter() - started
        )


def _failure(exc: stripe.StripeError) -> StripeFailure:
    status = exc.http_status or 0
    # A 409 is a conflict with a request still running (idempotency_key_in_use: a
    # rescued attempt meeting its predecessor's request at Stripe, say): retried, never
    # final, whichever class the SDK gives it (APIError today; an IdempotencyError, its
    # type being idempotency_error, would be). Only a 400 idempotency_error, the key
    # reused with other parameters, is final.
    permanent = isinstance(exc, _PERMANENT) and status != 409
    should_retry = (exc.headers or {}).get("stripe-should-retry")
    if should_retry == "false":
        permanent = True
    elif should_retry == "true":
        permanent = False
    retry_now = isinstance(exc, stripe.APIConnectionError) or (
        isinstance(exc, (stripe.APIError, stripe.IdempotencyError))
        and (status == 409 or status >= 500)
    )
    if should_retry is not None:
        retry_now = should_retry == "true"
    replayed = (exc.headers or {}).get("idempotent-replayed") == "true" and status >= 500
    if replayed:
        retry_now = False  # the same key gets the same saved answer
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
        replayed_server_error=replayed,
        not_found=status == 404,
        # Stripe's refusal of the request itself, never of our key or permissions.
        refusal_message=exc.user_message
        if permanent and isinstance(exc, (stripe.CardError, stripe.InvalidRequestError))
        else None,
    )
