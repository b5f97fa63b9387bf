"""Runs one claimed job through its handler and records the outcome, River style."""

from __future__ import annotations

import logging
import time
import traceback
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, Protocol

from common.jsonlog import redact
from worker import telemetry
from worker.backoff import retry_delay
from worker.handlers import Done, JobFailure
from worker.models import Job
from worker.store import Store

log = logging.getLogger("worker.executor")


class Handler(Protocol):
    kind: str

    def work(self, job: Job) -> Done: ...


class JobExecutor:
    def __init__(self, store: Store, handlers: Mapping[str, Handler]) -> None:
        self._store = store
        self._handlers = dict(handlers)

    def execute(self, job: Job) -> None:
        """Works the job and records its outcome, which also gives its lease up.

        If the outcome cannot be recorded (the database went away), the lease
        stays until its connection dies or the time bound passes: the rescuer
        then runs the job again, and Stripe replays the intent it already made."""
        context: dict[str, Any] = {"job_id": job.id, "kind": job.kind, "attempt": job.attempt}
        try:
            self._execute(job, context)
        except Exception:
            log.exception("job outcome could not be recorded; it will be rescued", extra=context)

    def _execute(self, job: Job, context: dict[str, Any]) -> None:
        started = time.perf_counter()
        try:
            done = self._work(job)
        except JobFailure as failure:
            context["payment_id"] = str(failure.payment_id) if failure.payment_id else None
            context["stripe_request_id"] = failure.request_id
            self._fail(job, failure, failure.__cause__ or failure, started, context)
            return
        except Exception as exc:  # a bug or an outage: recorded on the job, retried
            unexpected = JobFailure(f"{type(exc).__name__}: {exc}", permanent=False)
            self._fail(job, unexpected, exc, started, context)
            return
        if done.payment_id is not None:
            context["payment_id"] = str(done.payment_id)
        if done.intent is not None:
            context["stripe_request_id"] = done.intent.request_id
            ours, latency = self._store.job_complete_with_intent(job, done.intent)
            if latency is not None:
                telemetry.PAYMENT_LATENCY.observe(latency)
        else:
            ours = self._store.job_complete(job)
        _finished(job, "completed", started)
        context["duration_ms"] = _ms_since(started)
        if ours:
            log.info("job completed", extra=context)
        else:
            log.warning("job completed, but it was no longer running: left as found", extra=context)

    def _work(self, job: Job) -> Done:
        handler = self._handlers.get(job.kind)
        if handler is None:
            raise JobFailure(f"no handler registered for job kind {job.kind!r}", permanent=False)
        return handler.work(job)

    def _fail(
        self,
        job: Job,
        failure: JobFailure,
        cause: BaseException,
        started: float,
        context: dict[str, Any],
    ) -> None:
        error = {
            "at": datetime.now(UTC).isoformat(),
            "attempt": job.attempt,
            "error": redact(failure.message),
            "trace": redact("".join(traceback.format_exception(cause))),
        }
        context["duration_ms"] = _ms_since(started)
        context["error"] = failure.message
        if failure.permanent or job.attempt >= job.max_attempts:
            if not failure.permanent:
                context["error"] = f"gave up after {job.attempt} attempts: {failure.message}"
            # The caller gets a reason without internals; the detail is in errors[] and the log.
            failed = []
            if failure.payment_id:
                failed = [(failure.payment_id, failure.caller_message(failure.payment_id))]
            ours = self._store.job_discard(job, error, failed)
            _finished(job, "discarded", started)
            log.error("job discarded" if ours else "job failed, no longer running", extra=context)
            return
        delay = retry_delay(job.attempt)
        ours = self._store.job_retry(job, error, delay)
        _finished(job, "retried", started)
        context["retry_in_s"] = round(delay, 3)
        log.warning(
            "job failed, will retry" if ours else "job failed, no longer running", extra=context
        )


def _finished(job: Job, outcome: str, started: float) -> None:
    telemetry.JOBS_FINISHED.labels(job.kind, outcome).inc()
    telemetry.JOB_DURATION.labels(job.kind, outcome).observe(time.perf_counter() - started)


def _ms_since(started: float) -> float:
    return round((time.perf_counter() - started) * 1000, 3)
