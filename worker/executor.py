"""Runs one claimed job through its kind's work and records the outcome, River style.

Kind-agnostic: what a kind does, and what giving up one of its jobs means, are
registered with the kind (worker/jobs.py). A discarded job's effect (failing its
payment, say) is applied by the database whoever discards it (payments.job_kind)."""

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
from worker.jobs import Done, Job, JobFailure, Kind

log = logging.getLogger("worker.executor")


class Outcomes(Protocol):
    """How the core records an outcome; each call is fenced by the job's lease and
    returns whether the job was still this attempt's."""

    def job_complete(self, job: Job) -> bool: ...

    def job_retry(self, job: Job, error: dict[str, Any], delay_seconds: float) -> bool: ...

    def job_discard(self, job: Job, error: dict[str, Any]) -> bool: ...


class JobExecutor:
    def __init__(self, store: Outcomes, kinds: Mapping[str, Kind]) -> None:
        self._store = store
        self._kinds = kinds

    def execute(self, job: Job) -> None:
        """Works the job and records its outcome, which also gives its lease up.

        If the outcome cannot be recorded (the database went away), the lease
        stays until its connection dies or the time bound passes: the rescuer
        then runs the job again."""
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
            context.update(failure.context)
            self._fail(job, failure, failure.__cause__ or failure, started, context)
            return
        except Exception as exc:  # a bug or an outage: recorded on the job, retried
            unexpected = JobFailure(f"{type(exc).__name__}: {exc}", permanent=False)
            self._fail(job, unexpected, exc, started, context)
            return
        context.update(done.context)
        ours = done.complete(job) if done.complete else self._store.job_complete(job)
        _finished(job, "completed", started)
        context["duration_ms"] = _ms_since(started)
        if ours:
            log.info("job completed", extra=context)
        else:
            log.warning("job completed, but it was no longer running: left as found", extra=context)

    def _work(self, job: Job) -> Done:
        kind = self._kinds.get(job.kind)
        if kind is None:
            # As River does: another deployment may know the kind, so errored
            # and retried with backoff, and discarded at max_attempts.
            raise JobFailure(f"no handler registered for job kind {job.kind!r}", permanent=False)
        return kind.work(job)

    def _fail(
        self,
        job: Job,
        failure: JobFailure,
        cause: BaseException,
        started: float,
        context: dict[str, Any],
    ) -> None:
        error: dict[str, Any] = {
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
            if failure.caller_message:
                # Read by the kind's given-up effect; River ignores extra keys.
                error["caller_message"] = redact(failure.caller_message)
            ours = self._store.job_discard(job, error)
            _finished(job, "discarded", started)
            log.error("job discarded" if ours else "job failed, no longer running", extra=context)
            return
        delay = retry_delay(job.error_count + 1)
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
