"""Makes retryable and scheduled jobs available when their time comes."""

from __future__ import annotations

import logging
import threading

from worker.store import Store

log = logging.getLogger("worker.scheduler")


class Scheduler:
    def __init__(
        self,
        store: Store,
        *,
        queue: str,
        wake: threading.Event,
        stop: threading.Event,
        interval: float = 0.5,
        batch: int = 1000,
    ) -> None:
        if interval <= 0 or batch < 1:
            raise ValueError("interval must be positive and batch at least 1")
        self._store = store
        self._queue = queue
        self._wake = wake
        self._stop = stop
        self._interval = interval
        self._batch = batch

    def run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.run_once()
            except Exception:
                log.exception("scheduling due jobs failed; trying again")

    def run_once(self) -> int:
        """Makes due jobs available; returns how many."""
        scheduled = self._store.job_schedule_due(self._queue, self._batch)
        if scheduled:
            # Our own listener will hear the NOTIFY too; waking now saves a hop.
            self._wake.set()
            log.debug("jobs made available", extra={"scheduled": scheduled})
        return scheduled
