"""A capture or cancel whose key answers a 5xx Stripe saved for it: the intent says whether
it was done; if not, the next generation's key asks (never the dead key again, never a
second capture: an intent captured already refuses another)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import pytest

from worker import jobs
from worker.jobs import Job
from worker.models import ObservedIntent, OperationJob, OperationResult
from worker.operations import MAX_OPERATION_KEYS_PER_ATTEMPT, CancelPayment, CapturePayment
from worker.stripe_gateway import StripeFailure, cancel_key, capture_key

NOW = datetime(2026, 12, 2, tzinfo=UTC)
OPERATION = UUID(int=21)


def intent(status: str) -> ObservedIntent:
    return ObservedIntent("pi_1", status, 2500, "usd", 2500, None, None)


def saved_5xx() -> StripeFailure:
    return StripeFailure(
        "Sorry", permanent=False, kind="APIError", request_id=None, replayed_server_error=True
    )


class Store:
    def __init__(self, operation: str) -> None:
        self.finished: list[ObservedIntent] = []
        self.operation = operation

    def job_operation_get(self, job: Job) -> OperationJob:
        return OperationJob(
            OPERATION,
            self.operation,
            None,
            None,
            "requested",
            UUID(int=1),
            "requires_capture",
            2500,
            "USD",
            None,
            "manual",
            "pi_1",
            NOW,
        )

    def observation_token(self) -> datetime:
        return NOW

    def job_operation_finish(
        self, job: Job, token: datetime, observed: ObservedIntent
    ) -> OperationResult:
        self.finished.append(observed)
        return OperationResult(True, "succeeded", None, "requires_capture", observed.status)


class Gateway:
    """Answers each call from `answers` (an exception is raised), each retrieve `current`."""

    def __init__(self, answers: list[Any], current: str) -> None:
        self.answers = answers
        self.current = current
        self.generations: list[int] = []

    def capture_payment_intent(
        self, intent_id: str, amount: int | None, operation_id: UUID, generation: int = 0
    ) -> ObservedIntent:
        return self._answer(generation)

    def cancel_payment_intent(
        self, intent_id: str, reason: str | None, operation_id: UUID, generation: int = 0
    ) -> ObservedIntent:
        return self._answer(generation)

    def retrieve_payment_intent(self, intent_id: str) -> ObservedIntent:
        return intent(self.current)

    def _answer(self, generation: int) -> ObservedIntent:
        self.generations.append(generation)
        answer = self.answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        assert isinstance(answer, ObservedIntent)
        return answer


def job() -> Job:
    return Job(7, "capture_payment", {}, 2, 5, 1, NOW, NOW)


def capture(gateway: Gateway) -> tuple[Store, jobs.Done]:
    store = Store("capture")
    done = CapturePayment(store, gateway).run(job())  # type: ignore[arg-type]
    assert done.complete is not None and done.complete(job())
    return store, done


def test_a_capture_the_saved_5xx_hid_is_finished_with_the_intent_as_it_is() -> None:
    gateway = Gateway([saved_5xx()], current="succeeded")
    store, _ = capture(gateway)
    assert gateway.generations == [0]
    assert [i.status for i in store.finished] == ["succeeded"]


def test_a_capture_not_done_is_asked_with_the_next_key() -> None:
    gateway = Gateway([saved_5xx(), saved_5xx(), intent("succeeded")], current="requires_capture")
    store, _ = capture(gateway)
    assert gateway.generations == [0, 1, 2]
    assert [i.status for i in store.finished] == ["succeeded"]


def test_keys_that_all_answer_saved_5xx_leave_a_transient_failure() -> None:
    answers: list[Any] = [saved_5xx() for _ in range(MAX_OPERATION_KEYS_PER_ATTEMPT)]
    gateway = Gateway(answers, current="requires_capture")
    with pytest.raises(jobs.JobFailure) as failed:
        CapturePayment(Store("capture"), gateway).run(job())  # type: ignore[arg-type]
    assert failed.value.permanent is False
    assert gateway.generations == list(range(MAX_OPERATION_KEYS_PER_ATTEMPT))


def test_a_cancel_the_saved_5xx_hid_is_finished_too() -> None:
    gateway = Gateway([saved_5xx()], current="canceled")
    store = Store("cancel")
    cancel = CancelPayment(store, gateway, lambda *_a: None, "USD")  # type: ignore[arg-type]
    done = cancel.run(job())
    assert done.complete is not None and done.complete(job())
    assert [i.status for i in store.finished] == ["canceled"]


def test_generation_keys() -> None:
    assert capture_key(OPERATION, 0) == capture_key(OPERATION)
    assert capture_key(OPERATION, 2) == f"payment-worker:capture_payment:{OPERATION}:2"
    assert cancel_key(OPERATION, "pi_1", 1) == f"payment-worker:cancel_payment:{OPERATION}:pi_1:1"
