"""Job handlers: what each job kind does, and its registration with the queue core
(worker/jobs.py). They never run SQL: they read and write through a narrow
interface of the store."""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from functools import partial
from typing import Protocol
from uuid import UUID

from worker import jobs, operations, telemetry
from worker.models import Job, LifecycleJob, Observation, ObservedIntent, Payment, PaymentIntent
from worker.stripe_gateway import StripeFailure, StripeGateway, key_generation

log = logging.getLogger("worker.handlers")

# Keys one attempt may move through when each answers a saved 5xx (each costs a create and a
# search); beyond that the job retries with backoff and walks the same keys again.
MAX_KEYS_PER_ATTEMPT = 4

# What the database does when a create_payment_intent job is given up, by our
# executor, our rescuer or anyone else's (schema/deploy/worker_api.sql): fails
# its payment if it still waits for its intent, with caller_reason's words.
PAYMENT_GIVEN_UP = "payments.create_payment_intent_given_up"
# An apply_stripe_event job given up: its event stays pending, the reason on it
# (schema/deploy/payment_lifecycle.sql), and the unapplied-events alert fires.
EVENT_GIVEN_UP = "payments.apply_stripe_event_given_up"
LIFECYCLE_KINDS = ("apply_stripe_event", "sync_payment")
# What offering an observed PaymentIntent to its payment did (payments.job_payment_observe).
OBSERVATION_RESULTS = ("written", "stale", "refused", "ignored")


class PaymentStore(Protocol):
    def job_payment_get(self, job: Job) -> Payment | None: ...

    def job_complete_with_intent(
        self, job: Job, intent: PaymentIntent
    ) -> tuple[bool, float | None]: ...


class LifecycleStore(Protocol):
    def job_lifecycle_get(self, job: Job) -> LifecycleJob | None: ...

    def observation_token(self) -> datetime: ...

    def job_payment_observe(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> Observation: ...

    def job_lifecycle_ignore(self, job: Job, reason: str) -> bool: ...


def caller_reason(payment_id: UUID) -> str:
    """What the caller reads of a failure whose detail is for the operator only.

    The RPC raises it as `Payment intent creation failed: <this>`; keep it stable.
    payments.create_payment_intent_given_up writes the same words."""
    return f"the payment could not be created (payment {payment_id}); the operator has the details"


class JobFailure(jobs.JobFailure):
    """A payment job's failure: `payment_id` and `request_id` go into its log lines;
    `public_message` is what the caller may read instead of `caller_reason` (a card
    decline)."""

    def __init__(
        self,
        message: str,
        *,
        permanent: bool,
        payment_id: UUID | None = None,
        request_id: str | None = None,
        public_message: str | None = None,
    ) -> None:
        super().__init__(
            message,
            permanent=permanent,
            caller_message=public_message,
            context=_log_context(payment_id, request_id),
        )
        self.payment_id = payment_id


@dataclass(frozen=True)
class Done:
    """The job is finished; `intent` is to be stored on its payment, if any."""

    payment_id: UUID | None = None
    intent: PaymentIntent | None = None


class IntentMaker:
    """Obtains a payment's PaymentIntent: creates it, or adopts the one Stripe already has.

    The create job uses it, and so does the cancel of a payment still waiting for its
    intent: both walk the same keys and generations from the payment's creation, so the
    cancel gets the very intent the create job made or is making, never a second one."""

    def __init__(self, gateway: StripeGateway, *, accept_canceled: bool = False) -> None:
        self._gateway = gateway
        # A canceled intent found for the payment is the cancel's own earlier work, to be
        # finished; for a create it is no intent to pay.
        self._accept_canceled = accept_canceled

    def obtain(self, payment: Payment, job: Job, first_attempt: datetime) -> PaymentIntent:
        """Creates the intent, or adopts the one Stripe already has for this payment.

        A key may hide an intent in two ways: Stripe forgot it (over 24 h since the first
        attempt: a new generation's key, so search first) or it saved a 5xx (every retry
        gets that 500 back: search, then the next generation's key). Each generation's key
        is fixed, so a later attempt walking the same keys gets Stripe's replays. Raises
        StripeFailure, or JobFailure when what Stripe has is not the payment's.

        `first_attempt` starts the generations: the create job's creation, which is the
        payment's (they are inserted in one transaction)."""
        generation = key_generation(first_attempt, datetime.now(UTC))
        if generation > 0 and (adopted := self._adopt(payment)) is not None:
            return adopted
        searched = False
        for _ in range(MAX_KEYS_PER_ATTEMPT):
            try:
                return self._gateway.create_payment_intent(payment, generation)
            except StripeFailure as exc:
                failure, searched = exc, False
                if not exc.replayed_server_error:
                    break
                if (adopted := self._adopt(payment)) is not None:
                    return adopted
                searched = True
                generation += 1
        # About to give up: a lost answer may have made the intent all the same.
        giving_up = not failure.permanent and job.attempt >= job.max_attempts
        if giving_up and not searched and (adopted := self._adopt(payment)) is not None:
            return adopted
        raise failure

    def _adopt(self, payment: Payment) -> PaymentIntent | None:
        """The payment's intent if Stripe has one (the oldest, if several) and it is what
        the payment asked for; None when there is none. Never creates anything."""
        found = sorted(self._gateway.find_payment_intents(payment), key=lambda i: i.created)
        if not found:
            return None
        intent = found[0]
        if len(found) > 1:
            log.warning(
                "several PaymentIntents for one payment; the oldest is adopted",
                extra={"payment_id": str(payment.id), "intents": [i.id for i in found]},
            )
        wanted = (payment.amount, payment.currency.lower())
        canceled = intent.status == "canceled" and not self._accept_canceled
        if (intent.amount, intent.currency.lower()) != wanted or canceled:
            raise JobFailure(
                f"PaymentIntent {intent.id} with metadata.payment_id {payment.id} is "
                f"{intent.amount} {intent.currency} ({intent.status}), the payment "
                f"{payment.amount} {payment.currency.lower()}: not adopted and no other "
                "created, so nothing is charged twice; reconcile it in Stripe",
                permanent=True,
                payment_id=payment.id,
                request_id=intent.request_id,
            )
        if intent.client_secret is None:
            raise StripeFailure(
                f"PaymentIntent {intent.id} was found without its client_secret",
                permanent=False,
                kind="api_error",
                request_id=intent.request_id,
            )
        log.info(
            "existing PaymentIntent adopted",
            extra={"payment_id": str(payment.id), "provider_payment_id": intent.id},
        )
        return PaymentIntent(
            payment_id=payment.id,
            provider_payment_id=intent.id,
            client_secret=intent.client_secret,
            request_id=intent.request_id,
        )


class CreatePaymentIntent:
    """kind `create_payment_intent`, args `{"payment_id": uuid}`."""

    kind = "create_payment_intent"

    def __init__(self, payments: PaymentStore, gateway: StripeGateway, currency: str) -> None:
        self._payments = payments
        self._maker = IntentMaker(gateway)
        self._currency = currency

    def run(self, job: Job) -> jobs.Done:
        """The queue core's side: the work's result, as an outcome to record."""
        done = self.work(job)
        intent = done.intent
        context = _log_context(done.payment_id, intent.request_id if intent else None)
        if intent is None:
            return jobs.Done(context=context)
        return jobs.Done(complete=partial(self._complete, intent), context=context)

    def _complete(self, intent: PaymentIntent, job: Job) -> bool:
        ours, latency = self._payments.job_complete_with_intent(job, intent)
        if latency is not None:
            telemetry.PAYMENT_LATENCY.observe(latency)
        return ours

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
            return Done(
                payment_id=payment.id, intent=self._maker.obtain(payment, job, job.created_at)
            )
        except StripeFailure as exc:
            raise JobFailure(
                exc.message,
                permanent=exc.permanent,
                payment_id=payment.id,
                request_id=exc.request_id,
                public_message=exc.public_message,
            ) from exc


class ApplyPaymentIntent:
    """kinds `apply_stripe_event` (args `{"event_id", "payment_id"}`) and `sync_payment`
    (args `{"payment_id"}`): the payment's PaymentIntent as Stripe has it now.

    Never the event's payload: an observation token is taken from the database's
    clock, then the intent is retrieved, and the store writes it only if that token
    is newer than the one the row holds (README: "Payment status")."""

    def __init__(self, kind: str, store: LifecycleStore, gateway: StripeGateway) -> None:
        if kind not in LIFECYCLE_KINDS:
            raise ValueError(f"not a lifecycle kind: {kind!r}")
        self.kind = kind
        self._store = store
        self._gateway = gateway

    def run(self, job: Job) -> jobs.Done:
        about = self._store.job_lifecycle_get(job)
        if about is None:
            raise JobFailure(
                f"{self.kind} job {job.id}: not held, or its payment does not exist",
                permanent=True,
            )
        context = _log_context(about.payment_id, None)
        if about.event_id is not None:
            context["event_id"] = about.event_id
        if self.kind == "apply_stripe_event" and about.event_outcome != "pending":
            # Its outcome is recorded already (another attempt wrote it): nothing to do.
            return jobs.Done(context=context)
        intent_id = about.event_intent_id or about.provider_payment_id
        if self.kind == "sync_payment":
            intent_id = about.provider_payment_id
        if intent_id is None:
            reason = "the event names no PaymentIntent, and the payment has none stored"
            return jobs.Done(complete=partial(self._ignore, reason), context=context)
        if about.provider_payment_id is not None and intent_id != about.provider_payment_id:
            reason = (
                f"PaymentIntent {intent_id} is not payment {about.payment_id}'s "
                f"({about.provider_payment_id})"
            )
            return jobs.Done(complete=partial(self._ignore, reason), context=context)
        # The token first: the retrieve that follows sees Stripe at or after it.
        token = self._store.observation_token()
        try:
            intent = self._gateway.retrieve_payment_intent(intent_id)
            if (intent.amount_received or 0) > 0 or intent.status == "succeeded":
                # Money taken may have gone back: its refunds, a dashboard's too.
                refunds = tuple(self._gateway.list_refunds(intent_id))
                intent = replace(intent, refunds=refunds)
        except StripeFailure as exc:
            if exc.not_found:
                reason = f"Stripe has no PaymentIntent {intent_id}"
                return jobs.Done(complete=partial(self._ignore, reason), context=context)
            raise JobFailure(
                exc.message,
                permanent=exc.permanent,
                payment_id=about.payment_id,
                request_id=exc.request_id,
            ) from exc
        if intent.request_id is not None:
            context["stripe_request_id"] = intent.request_id
        return jobs.Done(complete=partial(self._observe, token, intent, context), context=context)

    def _ignore(self, reason: str, job: Job) -> bool:
        log.info("%s: nothing to apply", self.kind, extra={"job_id": job.id, "reason": reason})
        telemetry.OBSERVATIONS.labels(self.kind, "ignored").inc()
        return self._store.job_lifecycle_ignore(job, reason)

    def _observe(
        self, token: datetime, intent: ObservedIntent, context: dict[str, str | None], job: Job
    ) -> bool:
        observed = self._store.job_payment_observe(job, token, intent)
        if not observed.completed:
            return False
        result = observed.result or "unknown"
        telemetry.OBSERVATIONS.labels(self.kind, result).inc()
        if observed.event_age_seconds is not None:
            telemetry.EVENT_APPLY.observe(observed.event_age_seconds)
        extra = {
            **context,
            "job_id": job.id,
            "result": result,
            "provider_status": intent.status,
            "from_status": observed.old_status,
            "status": observed.new_status,
        }
        if observed.result == "refused":
            # Stripe reported a move the guard does not allow (out of a final status):
            # not written; the event counts as applied. Worth a look.
            log.warning("PaymentIntent state not applied: %s", observed.reason, extra=extra)
        elif observed.result == "ignored":
            log.warning("PaymentIntent ignored: %s", observed.reason, extra=extra)
        elif observed.result == "written" and observed.old_status != observed.new_status:
            log.info("payment status changed", extra=extra)
        return True


def _payment_id(job: Job) -> UUID:
    raw = job.args.get("payment_id")
    try:
        return UUID(str(raw))
    except ValueError:
        raise JobFailure(f"job args have no valid payment_id: {raw!r}", permanent=True) from None


class Store(
    PaymentStore, LifecycleStore, operations.OperationStore, operations.RefundStore, Protocol
):
    pass


def register(kinds: jobs.Kinds, payments: Store, gateway: StripeGateway, currency: str) -> None:
    """The payment kinds, each with its work and its given-up effect."""
    handler = CreatePaymentIntent(payments, gateway, currency)
    kinds.register(handler.kind, handler.run, given_up=PAYMENT_GIVEN_UP)
    capture = operations.CapturePayment(payments, gateway)
    kinds.register(capture.kind, capture.run, given_up=operations.OPERATION_GIVEN_UP)
    obtain = IntentMaker(gateway, accept_canceled=True).obtain
    cancel = operations.CancelPayment(payments, gateway, obtain, currency)
    kinds.register(cancel.kind, cancel.run, given_up=operations.OPERATION_GIVEN_UP)
    refund = operations.CreateRefund(payments, gateway)
    kinds.register(refund.kind, refund.run, given_up=operations.REFUND_GIVEN_UP)
    apply = ApplyPaymentIntent("apply_stripe_event", payments, gateway)
    kinds.register(apply.kind, apply.run, given_up=EVENT_GIVEN_UP)
    sync = ApplyPaymentIntent("sync_payment", payments, gateway)
    kinds.register(sync.kind, sync.run, given_up=None)


def _log_context(payment_id: UUID | None, request_id: str | None) -> dict[str, str | None]:
    context: dict[str, str | None] = {}
    if payment_id is not None:
        context["payment_id"] = str(payment_id)
    if request_id is not None:
        context["stripe_request_id"] = request_id
    return context
