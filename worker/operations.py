"""Job handlers of what is asked of a payment after its PaymentIntent: capture, cancel
and refunds (schema/deploy/payment_operations.sql). Like worker/handlers.py, which
registers them, they never run SQL.

Each asks Stripe once per request row: a key derived from the operation's or the
refund's id, so a retry gets Stripe's replay instead of a second capture or refund. A
permanent refusal carries Stripe's words as the caller's message: the waiting RPC
raises `Capture failed: <them>` (`Cancel failed`, `Refund failed`)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from functools import partial
from typing import Protocol

from worker import jobs
from worker.models import (
    Job,
    ObservedIntent,
    ObservedRefund,
    OperationJob,
    OperationResult,
    Payment,
    PaymentIntent,
    RefundJob,
    RefundResult,
)
from worker.stripe_gateway import StripeFailure, StripeGateway, key_generation

log = logging.getLogger("worker.operations")

# What the database does when one of these jobs is given up, by anyone: the operation
# or refund fails, with the last error's caller_message or a neutral sentence.
OPERATION_GIVEN_UP = "payments.payment_operation_given_up"
REFUND_GIVEN_UP = "payments.create_refund_given_up"

# Refund keys one attempt may move through when each answers a saved 5xx (as creates).
MAX_REFUND_KEYS_PER_ATTEMPT = 4
# The same for capture and cancel keys.
MAX_OPERATION_KEYS_PER_ATTEMPT = 4

# The payment's intent, created or adopted exactly as the create job does (IntentMaker).
ObtainIntent = Callable[[Payment, Job, datetime], PaymentIntent]


class OperationStore(Protocol):
    def job_operation_get(self, job: Job) -> OperationJob | None: ...

    def observation_token(self) -> datetime: ...

    def job_operation_check(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> OperationResult: ...

    def job_operation_finish(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> OperationResult: ...


class RefundStore(Protocol):
    def job_refund_get(self, job: Job) -> RefundJob | None: ...

    def observation_token(self) -> datetime: ...

    def job_refund_finish(
        self, job: Job, token: datetime, refund: ObservedRefund
    ) -> RefundResult: ...


def failure(
    exc: StripeFailure, context: dict[str, str | None], *, permanent: bool | None = None
) -> jobs.JobFailure:
    """A Stripe failure as the job's; a refusal keeps Stripe's words for the caller."""
    if exc.request_id is not None:
        context = {**context, "stripe_request_id": exc.request_id}
    return jobs.JobFailure(
        exc.message,
        permanent=exc.permanent if permanent is None else permanent,
        caller_message=exc.refusal_message,
        context=context,
    )


class _IntentOperation:
    """A capture or cancel: one Stripe call on the payment's intent, its answer written
    with the operation's outcome and the job's completion (job_operation_finish)."""

    kind: str
    operation: str
    # Stripe's status once the operation is done, whoever did it.
    done_status: str

    def __init__(self, store: OperationStore, gateway: StripeGateway) -> None:
        self._store = store
        self._gateway = gateway

    def run(self, job: Job) -> jobs.Done:
        op = self._store.job_operation_get(job)
        if op is None:
            raise jobs.JobFailure(
                f"{self.kind} job {job.id}: not held, or its operation does not exist",
                permanent=True,
            )
        context: dict[str, str | None] = {
            "payment_id": str(op.payment_id),
            "operation_id": str(op.operation_id),
        }
        if op.operation != self.operation:
            raise jobs.JobFailure(
                f"{self.kind} job {job.id}: operation {op.operation_id} is a {op.operation}",
                permanent=True,
                context=context,
            )
        if op.operation_status != "requested":
            # Answered already (another attempt finished it): never twice.
            return jobs.Done(context=context)
        intent_id, secret = self._target(op, job, context)
        context["provider_payment_id"] = intent_id
        if op.check_first:
            refused = self._check(op, job, intent_id, secret, context)
            if refused is not None:
                return refused
        token, intent = self._ask(op, intent_id, context)
        intent = _adopting(intent, secret)
        if intent.request_id is not None:
            context["stripe_request_id"] = intent.request_id
        finished = self._store.job_operation_finish(job, token, intent)
        if finished.operation_status == "mismatch":
            # The payment holds another intent (this one canceled in vain): the job
            # stays ours, and the next attempt works on the stored one.
            raise _mismatch(op, intent_id, context)
        if finished.completed:
            self._log(str(finished.operation_status), job, intent, finished, context)
        # Written and completed already, in one transaction: the core only reports it.
        return jobs.Done(complete=lambda _job: finished.completed, context=context)

    def _log(
        self,
        what: str,
        job: Job,
        intent: ObservedIntent,
        result: OperationResult,
        context: dict[str, str | None],
    ) -> None:
        log.info(
            "%s %s",
            self.operation,
            what,
            extra={
                **context,
                "job_id": job.id,
                "provider_status": intent.status,
                "from_status": result.old_status,
                "status": result.new_status,
                "reason": result.reason,
            },
        )

    def _target(
        self, op: OperationJob, job: Job, context: dict[str, str | None]
    ) -> tuple[str, str | None]:
        """The intent to work on, and its client secret if this attempt obtained it."""
        if op.provider_payment_id is None:
            raise jobs.JobFailure(
                f"payment {op.payment_id} is {op.payment_status} and has no PaymentIntent: "
                f"nothing to {self.operation}",
                permanent=True,
                caller_message=f"the payment is {op.payment_status} and has no PaymentIntent",
                context=context,
            )
        return op.provider_payment_id, None

    def _call(self, op: OperationJob, intent_id: str, generation: int) -> ObservedIntent:
        raise NotImplementedError

    def _check(
        self,
        op: OperationJob,
        job: Job,
        intent_id: str,
        secret: str | None,
        context: dict[str, str | None],
    ) -> jobs.Done | None:
        """For a request the database wants checked first (a client's cancel): the intent
        as Stripe has it now, shown to the database, which decides whether the call may
        go on (None) or refuses the request (failed and completed: Stripe is not asked).
        The customer may have paid since the request was recorded."""
        token, current = self._current(intent_id, context)
        current = _adopting(current, secret)
        checked = self._store.job_operation_check(job, token, current)
        if checked.operation_status == "mismatch":
            raise _mismatch(op, intent_id, context)
        if not checked.completed:
            if checked.operation_status == "requested":
                return None  # unpaid: the call goes on
            if checked.operation_status is not None:
                # Answered already (another attempt finished it): never twice.
                return jobs.Done(context=context)
        else:
            self._log("refused before Stripe was asked", job, current, checked, context)
        # Refused, failed and completed in one transaction (or no longer ours): reported only.
        return jobs.Done(complete=lambda _job: checked.completed, context=context)

    def _ask(
        self, op: OperationJob, intent_id: str, context: dict[str, str | None]
    ) -> tuple[datetime, ObservedIntent]:
        """The call, and its answer's token. A key that answers a 5xx Stripe saved for it
        (it may have been done, or not) is never asked again: the intent tells whether it
        was done; if not, the next generation's key asks."""
        for generation in range(MAX_OPERATION_KEYS_PER_ATTEMPT):
            token = self._store.observation_token()
            try:
                return token, self._call(op, intent_id, generation)
            except StripeFailure as exc:
                if not exc.replayed_server_error:
                    return self._after_refusal(exc, intent_id, context)
                last = exc
            token, current = self._current(intent_id, context)
            if current.status == self.done_status:
                return token, current
        raise failure(last, context) from last

    def _current(
        self, intent_id: str, context: dict[str, str | None]
    ) -> tuple[datetime, ObservedIntent]:
        """The intent as Stripe has it now, with the token taken before asking."""
        token = self._store.observation_token()
        try:
            return token, self._gateway.retrieve_payment_intent(intent_id)
        except StripeFailure as exc:
            raise failure(exc, context) from exc

    def _after_refusal(
        self, exc: StripeFailure, intent_id: str, context: dict[str, str | None]
    ) -> tuple[datetime, ObservedIntent]:
        """A permanent refusal may mean it is done already (captured or canceled by an
        earlier request, or by Stripe): then the intent as it is now finishes the
        operation. Otherwise the refusal stands, with Stripe's words; giving the job up
        re-reads the payment (payments.payment_operation_given_up queues a sync_payment),
        so an intent Stripe moved on (an expired authorisation) reaches the payment."""
        if not exc.permanent:
            raise failure(exc, context) from exc
        token, current = self._current(intent_id, context)
        if current.status == self.done_status:
            return token, current
        raise failure(exc, context) from exc


def _adopting(intent: ObservedIntent, secret: str | None) -> ObservedIntent:
    """The intent with the client secret this attempt obtained it with (Stripe's later
    answers carry none): the payment adopts the intent with its secret."""
    if intent.client_secret is None and secret is not None:
        return replace(intent, client_secret=secret)
    return intent


def _mismatch(op: OperationJob, intent_id: str, context: dict[str, str | None]) -> jobs.JobFailure:
    return jobs.JobFailure(
        f"payment {op.payment_id} holds another PaymentIntent than {intent_id}; "
        "retried on the stored one",
        permanent=False,
        context=context,
    )


class CapturePayment(_IntentOperation):
    """kind `capture_payment`, args `{"operation_id", "payment_id"}`: captures an
    authorised payment (requires_capture), all of it or a part, the rest released."""

    kind = "capture_payment"
    operation = "capture"
    done_status = "succeeded"

    def _call(self, op: OperationJob, intent_id: str, generation: int) -> ObservedIntent:
        return self._gateway.capture_payment_intent(
            intent_id, op.amount, op.operation_id, generation
        )


class CancelPayment(_IntentOperation):
    """kind `cancel_payment`, args `{"operation_id", "payment_id"}`: cancels the payment's
    intent. A payment still waiting for its intent gets it first, exactly as its create
    job does (the same keys): the very intent that job made or is making, which is then
    canceled. No payable intent is left behind."""

    kind = "cancel_payment"
    operation = "cancel"
    done_status = "canceled"

    def __init__(
        self, store: OperationStore, gateway: StripeGateway, obtain: ObtainIntent, currency: str
    ) -> None:
        super().__init__(store, gateway)
        self._obtain = obtain
        self._currency = currency

    def _target(
        self, op: OperationJob, job: Job, context: dict[str, str | None]
    ) -> tuple[str, str | None]:
        if op.provider_payment_id is not None or op.payment_status != "pending_intent":
            return super()._target(op, job, context)
        payment = op.payment()
        if payment.currency != self._currency:
            raise jobs.JobFailure(
                f"payment is in {payment.currency} but this worker charges in "
                f"{self._currency} (PAYMENT_CURRENCY): its intent is not created here",
                permanent=True,
                context=context,
            )
        try:
            intent = self._obtain(payment, job, op.payment_created_at)
        except StripeFailure as exc:
            raise failure(exc, context) from exc
        return intent.provider_payment_id, intent.client_secret

    def _call(self, op: OperationJob, intent_id: str, generation: int) -> ObservedIntent:
        return self._gateway.cancel_payment_intent(
            intent_id, op.reason, op.operation_id, generation
        )


class CreateRefund:
    """kind `create_refund`, args `{"refund_id", "payment_id"}`: refunds the amount the
    refund row holds (decided by the RPC under the payment's lock) of the payment's
    intent, once.

    The key is the refund's (`…:create_refund:<refund_id>`, a new generation every 23 h
    as for creates). An attempt after a failed one, and a key answering a saved 5xx, first
    list the intent's refunds (strongly consistent, unlike search) and adopt the one whose
    metadata.refund_id is ours."""

    kind = "create_refund"

    def __init__(self, store: RefundStore, gateway: StripeGateway) -> None:
        self._store = store
        self._gateway = gateway

    def run(self, job: Job) -> jobs.Done:
        refund = self._store.job_refund_get(job)
        if refund is None:
            raise jobs.JobFailure(
                f"{self.kind} job {job.id}: not held, or its refund does not exist",
                permanent=True,
            )
        context: dict[str, str | None] = {
            "payment_id": str(refund.payment_id),
            "refund_id": str(refund.refund_id),
        }
        if refund.refund_status != "pending_refund" or refund.provider_refund_id is not None:
            # Stripe has it already (this job's earlier attempt, or its event): never twice.
            return jobs.Done(context=context)
        if refund.provider_payment_id is None:
            raise jobs.JobFailure(
                f"payment {refund.payment_id} has no PaymentIntent to refund",
                permanent=True,
                caller_message="the payment has no PaymentIntent",
                context=context,
            )
        try:
            token, created = self._create_or_adopt(job, refund)
        except StripeFailure as exc:
            raise failure(exc, context) from exc
        context["provider_refund_id"] = created.id
        if created.request_id is not None:
            context["stripe_request_id"] = created.request_id
        return jobs.Done(complete=partial(self._finish, token, created, context), context=context)

    def _create_or_adopt(self, job: Job, refund: RefundJob) -> tuple[datetime, ObservedRefund]:
        generation = key_generation(refund.refund_created_at, datetime.now(UTC))
        listed = job.attempt > 1 or job.error_count > 0 or generation > 0
        if listed and (adopted := self._adopt(refund)) is not None:
            return adopted
        for _ in range(MAX_REFUND_KEYS_PER_ATTEMPT):
            token = self._store.observation_token()
            try:
                return token, self._gateway.create_refund(refund, generation)
            except StripeFailure as exc:
                last, listed = exc, False
                if not exc.replayed_server_error:
                    break
                if (adopted := self._adopt(refund)) is not None:
                    return adopted
                listed = True
                generation += 1
        # About to give up: a lost answer may have made the refund all the same.
        giving_up = not last.permanent and job.attempt >= job.max_attempts
        if giving_up and not listed and (adopted := self._adopt(refund)) is not None:
            return adopted
        raise last

    def _adopt(self, refund: RefundJob) -> tuple[datetime, ObservedRefund] | None:
        """Our refund at Stripe (metadata.refund_id), if it was made; never creates."""
        assert refund.provider_payment_id is not None
        token = self._store.observation_token()
        ours = [
            r
            for r in self._gateway.list_refunds(refund.provider_payment_id)
            if r.metadata_refund_id == str(refund.refund_id)
        ]
        if not ours:
            return None
        if len(ours) > 1:
            log.warning(
                "several Stripe refunds for one refund; the oldest is adopted",
                extra={"refund_id": str(refund.refund_id), "refunds": [r.id for r in ours]},
            )
        log.info(
            "existing refund adopted",
            extra={"refund_id": str(refund.refund_id), "provider_refund_id": ours[-1].id},
        )
        return token, ours[-1]  # listed newest first

    def _finish(
        self, token: datetime, refund: ObservedRefund, context: dict[str, str | None], job: Job
    ) -> bool:
        finished = self._store.job_refund_finish(job, token, refund)
        extra = {
            **context,
            "job_id": job.id,
            "result": finished.result,
            "provider_status": refund.status,
            "status": finished.refund_status,
        }
        if finished.result == "ignored":
            # Stripe answered with a refund that is not this row's: the row failed.
            log.warning("Stripe's refund is not this refund's; check it in Stripe", extra=extra)
        elif finished.completed:
            log.info("refund stored", extra=extra)
        return finished.completed
