"""What River's leader does, done by one worker at a time: elect a leader,
schedule due jobs, rescue jobs whose worker died, clean finished ones, keep our
queue's row in metadata.river_queue.

Every loop has one shape: settings checked in __init__, `run()` that only
sleeps, handles shutdown and calls `run_once()`, and `run_once()` that tests
call directly."""

from __future__ import annotations

import logging
import math
import os
import socket
import threading
import time
from abc import ABC, abstractmethod
from datetime import UTC, datetime, timedelta

import psycopg

from worker import telemetry
from worker.config import MIN_JOB_RETENTION
from worker.store import LEADER_TTL_SECONDS, Store
from worker.stripe_gateway import StripeFailure, StripeGateway

log = logging.getLogger("worker.maintenance")

RESCUE_ERROR = "the worker running this job stopped before recording its outcome; rescued"


class Leadership:
    """Holds the maintenance leadership: a row of payments.worker_leader naming
    this worker's leader connection, taken or renewed every `interval`.

    A follower takes it the moment its holder's session is gone. The leader
    counts itself leader only until its last renewal's `ttl` runs out, so one
    that cannot renew stops leading when the others may take over."""

    def __init__(
        self,
        store: Store,
        *,
        stop: threading.Event,
        leader_id: str | None = None,
        interval: float = 1.0,
        ttl: float = LEADER_TTL_SECONDS,
    ) -> None:
        if interval <= 0 or ttl <= interval:
            raise ValueError("interval must be positive and ttl longer than it")
        self._store = store
        self._stop = stop
        self._leader_id = (leader_id or f"{socket.gethostname()}:{os.getpid()}")[:127]
        self.interval = interval
        self.ttl = ttl
        self._until: float | None = None

    @property
    def held(self) -> bool:
        return self._until is not None and time.monotonic() < self._until

    def run(self) -> None:
        while True:
            telemetry.loop_beat("leadership")
            try:
                self.run_once()
            except psycopg.Error:
                log.warning("leader election failed; trying again", exc_info=True)
            if self._stop.wait(self.interval):
                return

    def run_once(self) -> bool:
        """Takes or renews the leadership; returns whether it leads."""
        was_leader = self.held
        asked = time.monotonic()
        try:
            elected = self._store.leader_elect(self._leader_id, self.ttl)
            # Counted from before the request: the server's expiry is later.
            self._until = asked + self.ttl if elected else None
        except psycopg.Error:
            self._until = None
            raise
        finally:
            if self.held != was_leader:
                log.info("maintenance leadership " + ("taken" if self.held else "lost"))
        return self.held


class LeaderLoop(ABC):
    """A maintenance loop over one queue's jobs, `batch` at a time, that does
    its work only while this process leads."""

    name = "maintenance"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        stop: threading.Event,
        interval: float,
        batch: int,
    ) -> None:
        if interval <= 0 or batch < 1:
            raise ValueError(f"{self.name}: interval must be positive and batch at least 1")
        self._store = store
        self._leadership = leadership
        self._queue = queue
        self._stop = stop
        self.interval = interval
        self._batch = batch

    def run(self) -> None:
        # Woken at least every BEAT_INTERVAL to report that the loop is alive,
        # however long its own interval (the cleaner's is a minute).
        due = time.monotonic() + self.interval
        while True:
            telemetry.loop_beat(self.name)
            if self._stop.wait(telemetry.beat_pause(due)):
                return
            if time.monotonic() < due:
                continue
            due = time.monotonic() + self.interval
            if not self._leadership.held:
                continue
            try:
                self.run_once()
            except psycopg.Error:
                log.warning("%s failed; trying again", self.name, exc_info=True)

    @abstractmethod
    def run_once(self) -> int:
        """One pass; returns how many jobs it changed."""


class Scheduler(LeaderLoop):
    """Retryable and scheduled jobs whose time has come become available."""

    name = "scheduler"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        wake: threading.Event,
        stop: threading.Event,
        interval: float = 0.5,
        batch: int = 1000,
    ) -> None:
        super().__init__(store, leadership, queue=queue, stop=stop, interval=interval, batch=batch)
        self._wake = wake

    def run_once(self) -> int:
        scheduled = self._store.job_schedule_due(self._batch)
        if scheduled:
            # The NOTIFY wakes every worker; waking our own producer saves a hop.
            self._wake.set()
            log.debug("jobs made available", extra={"scheduled": scheduled})
        return scheduled


class Rescuer(LeaderLoop):
    """Jobs left `running` by a dead worker become retryable after River's backoff
    (the scheduler then makes them available), or are discarded at max_attempts."""

    name = "rescuer"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        stop: threading.Event,
        stuck_after: float = 900.0,
        interval: float = 1.0,
        batch: int = 1000,
    ) -> None:
        super().__init__(store, leadership, queue=queue, stop=stop, interval=interval, batch=batch)
        if stuck_after <= 0:
            raise ValueError("rescuer: stuck_after must be positive")
        self._stuck_after = stuck_after

    def run_once(self) -> int:
        rescued = self._store.job_rescue_orphaned(self._stuck_after, self._batch, RESCUE_ERROR)
        for job in rescued:
            extra = {"job_id": job.id, "kind": job.kind, "attempt": job.attempt, "state": job.state}
            if job.retry_in_seconds is not None:
                extra["retry_in_s"] = round(job.retry_in_seconds, 3)
            log.warning("job rescued", extra=extra)
        if rescued:
            telemetry.JOBS_RESCUED.labels(self._queue).inc(len(rescued))
        return len(rescued)


class QueueKeeper(LeaderLoop):
    """Keeps our queue's row of metadata.river_queue, as River's producers keep theirs:
    River UI lists and pauses queues by these rows, and a River client's queue
    cleaner deletes one not updated for 24 h (and a pause with it)."""

    name = "queue keeper"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        stop: threading.Event,
        interval: float = 60.0,
    ) -> None:
        super().__init__(store, leadership, queue=queue, stop=stop, interval=interval, batch=1)
        self.paused = False

    def run_once(self) -> int:
        paused = self._store.queue_touch()
        if paused != self.paused:
            log.warning(
                "queue paused (River UI or a River client): no job is claimed until resumed"
                if paused
                else "queue resumed",
                extra={"queue": self._queue},
            )
        self.paused = paused
        return 0


class Cleaner(LeaderLoop):
    """Finished jobs are deleted after their retention, oldest first, in batches."""

    name = "cleaner"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        stop: threading.Event,
        completed_retention: float = 24 * 3600.0,
        discarded_retention: float = 7 * 24 * 3600.0,
        interval: float = 60.0,
        batch: int = 1000,
    ) -> None:
        super().__init__(store, leadership, queue=queue, stop=stop, interval=interval, batch=batch)
        if min(completed_retention, discarded_retention) < MIN_JOB_RETENTION:
            raise ValueError(f"cleaner: retentions must be at least {MIN_JOB_RETENTION:g} s")
        self._completed_retention = completed_retention
        self._discarded_retention = discarded_retention

    def run_once(self) -> int:
        deleted = 0
        while not self._stop.is_set():
            batch = self._store.job_clean_finalized(
                self._completed_retention, self._discarded_retention, self._batch
            )
            deleted += batch
            if batch < self._batch:
                break
        if deleted:
            log.info("finished jobs deleted", extra={"deleted": deleted})
        return deleted


class Reconciler(LeaderLoop):
    """What webhooks missed: every payment not yet final, with an intent, whose row has
    not reflected Stripe for `after` seconds gets a sync_payment job (at most one waits
    per payment), which re-reads its PaymentIntent through the same observation path as
    an event. At most `rate` a second: each pass queues `rate x interval` jobs, spread
    over the interval."""

    name = "reconciler"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        *,
        queue: str,
        stop: threading.Event,
        after: float = 600.0,
        rate: float = 5.0,
        interval: float = 1.0,
    ) -> None:
        if after < 1:
            raise ValueError("reconciler: after must be at least 1 s")
        if not 0 < rate <= 100:
            raise ValueError("reconciler: rate must be above 0 and at most 100 a second")
        super().__init__(
            store,
            leadership,
            queue=queue,
            stop=stop,
            interval=interval,
            batch=max(1, math.floor(rate * interval)),
        )
        self._after = after
        self._rate = rate

    def run_once(self) -> int:
        queued = self._store.payment_reconcile_enqueue(self._after, self._batch, self._rate)
        if queued:
            telemetry.RECONCILE_QUEUED.inc(queued)
            log.info("stale payments queued for a re-read from Stripe", extra={"queued": queued})
        return queued


class Backfill(LeaderLoop):
    """What the webhook receiver missed while it was down: Stripe's own event list
    (`GET /v1/events`: every payment_intent event and the refund ones), each recorded as
    the receiver would (payments.stripe_event_record, source `backfill`; one we hold is a
    free duplicate).

    From `margin` before the start of the last pass that read the list to its end, so
    an outage of the receiver between two passes is covered even when it has received
    newer events since. That position lives in payments.backfill_cursor, not in this
    process: a new leader (restart, failover) carries on from it. Only before the first
    saved pass, from `margin` before the newest event we hold (or `lookback` ago when we
    hold none). At most `max_pages` pages of 100 a pass; a longer list is continued
    from its saved cursor on the next pass, whichever leader runs it.

    The position moves only after the pass's events are recorded, and only from the
    leader's session (the database refuses any other): a pass that fails or loses the
    leadership halfway is read again."""

    name = "backfill"

    def __init__(
        self,
        store: Store,
        leadership: Leadership,
        gateway: StripeGateway,
        *,
        queue: str,
        stop: threading.Event,
        interval: float = 300.0,
        margin: float = 300.0,
        lookback: float = 3 * 86400.0,
        max_pages: int = 10,
    ) -> None:
        super().__init__(store, leadership, queue=queue, stop=stop, interval=interval, batch=1)
        # Stripe keeps events for 30 days.
        if not 0 <= margin <= lookback <= 30 * 86400:
            raise ValueError("backfill: need 0 <= margin <= lookback <= 30 days")
        if max_pages < 1:
            raise ValueError("backfill: max_pages must be at least 1")
        self._gateway = gateway
        self._margin = margin
        self._lookback = lookback
        self._max_pages = max_pages

    def _start(self) -> tuple[int, str | None, datetime]:
        """(created_gte, starting_after, started) of this pass."""
        position = self._store.backfill_position()
        if position is not None and position.resume is not None:
            return position.resume
        started = datetime.now(UTC)
        if position is not None and position.covered_at is not None:
            start = position.covered_at - timedelta(seconds=self._margin)
        elif (newest := self._store.stripe_event_newest_created()) is not None:
            start = newest - timedelta(seconds=self._margin)
        else:
            start = started - timedelta(seconds=self._lookback)
        return int(start.timestamp()), None, started

    def run_once(self) -> int:
        since, starting_after, started = self._start()
        try:
            events, last = self._gateway.list_events(
                since, starting_after=starting_after, max_pages=self._max_pages
            )
        except StripeFailure as exc:
            log.warning(
                "backfill: Stripe's event list failed; trying again next pass",
                extra={"error": exc.message, "stripe_request_id": exc.request_id},
            )
            return 0
        stored = 0
        # Oldest first, so the newest we hold only moves forward.
        for event in reversed(events):
            if self._store.stripe_event_record(event, "backfill") == "stored":
                stored += 1
        telemetry.BACKFILLED.inc(stored)
        # Everything listed is recorded: only now may the position move past it.
        if last is None:
            self._store.backfill_pass_complete(started)
        else:
            self._store.backfill_pass_cut(since, last, started)
        if stored or last is not None:
            log.info(
                "backfill: events recorded from Stripe's list",
                extra={"listed": len(events), "stored": stored, "more": last is not None},
            )
        return stored
