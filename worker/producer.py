"""Claims available jobs and hands them to a pool of threads, River's producer."""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg

from worker import telemetry
from worker.executor import JobExecutor
from worker.models import Job
from worker.store import Store

log = logging.getLogger("worker.producer")


class Producer:
    """Claims from our queue (payments.config) when woken (a NOTIFY, a finished job) or
    every `poll_interval` as a catch-up."""

    def __init__(
        self,
        store: Store,
        executor: JobExecutor,
        *,
        worker_id: str,
        concurrency: int,
        poll_interval: float,
        wake: threading.Event,
        stop: threading.Event,
    ) -> None:
        if concurrency < 1:
            raise ValueError("concurrency must be at least 1")
        if poll_interval <= 0:
            raise ValueError("poll_interval must be positive")
        self._store = store
        self._executor = executor
        self._worker_id = worker_id
        self._concurrency = concurrency
        self._poll_interval = poll_interval
        self._wake = wake
        self._stop = stop
        self._threads = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="job")
        self._lock = threading.Lock()
        self._in_flight = 0
        self._idle = threading.Condition(self._lock)

    def run(self) -> None:
        """Until `stop`: wait to be woken, claim. The jobs in hand are the
        caller's to wait for (`drain`), with a time limit."""
        due = time.monotonic() + self._poll_interval
        while not self._stop.is_set():
            telemetry.beat()
            telemetry.loop_beat("producer")
            # Woken at least every BEAT_INTERVAL to report that the loop is
            # alive; a catch-up claim only every poll_interval.
            if not self._wake.wait(telemetry.beat_pause(due)) and time.monotonic() < due:
                continue
            # Cleared before claiming: a NOTIFY that lands during the claim
            # sets it again and earns another claim, so none is lost.
            self._wake.clear()
            due = time.monotonic() + self._poll_interval
            if self._stop.is_set():
                break
            try:
                self.run_once()
            except psycopg.OperationalError as exc:
                # The claim connection reconnects on the next attempt, made after
                # a pause, not at the next poll: the wake-up this claim answered
                # (a NOTIFY, the listener's catch-up after its own reconnect) is
                # still owed a claim.
                log.warning("cannot claim: database unavailable", extra={"error": str(exc)})
                self._stop.wait(min(self._poll_interval, 1.0))
                self._wake.set()
            except psycopg.Error:
                log.exception("claiming jobs failed; retrying at the next wake-up")
                self._stop.wait(self._poll_interval)
            # Anything else is a bug: it ends the loop, and the worker's supervision
            # ends the process (supervisord restarts it) rather than retrying blindly.

    def run_once(self) -> int:
        """Claims as many jobs as there are free slots and starts them; returns how many."""
        with self._lock:
            free = self._concurrency - self._in_flight
        if free <= 0 or self._stop.is_set():
            return 0
        jobs = self._store.job_get_available(free, self._worker_id)
        for job in jobs:
            with self._lock:
                self._in_flight += 1
            self._threads.submit(self._execute, job)
        return len(jobs)

    @property
    def in_flight(self) -> int:
        with self._lock:
            return self._in_flight

    def drain(self, timeout: float) -> bool:
        """Waits until no job is in flight, at most `timeout` seconds; False if
        some still are."""
        with self._idle:
            return self._idle.wait_for(lambda: self._in_flight == 0, max(0.0, timeout))

    def shutdown(self) -> None:
        """Lets the job threads go without waiting for them: a job still in
        hand after `drain` is left to end with the process (its lease with it)."""
        self._threads.shutdown(wait=False, cancel_futures=True)

    def _execute(self, job: Job) -> None:
        try:
            self._executor.execute(job)
        finally:
            with self._idle:
                self._in_flight -= 1
                self._idle.notify_all()
            # A slot is free: claim again in case jobs are waiting.
            self._wake.set()
