"""Wires config, database, Stripe and the loops together; the process lifecycle."""

from __future__ import annotations

import contextlib
import faulthandler
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import weakref
from collections.abc import Callable
from types import FrameType

import psycopg.conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from worker import handlers, telemetry
from worker.config import Config
from worker.executor import JobExecutor
from worker.jobs import KindMismatch, Kinds
from worker.listener import InsertListener
from worker.maintenance import (
    Backfill,
    Cleaner,
    Leadership,
    QueueKeeper,
    Reconciler,
    Rescuer,
    Scheduler,
)
from worker.producer import Producer
from worker.store import CONNECTION_PARAMS, Store
from worker.stripe_gateway import StripeGateway, StripeSettings

log = logging.getLogger("worker")

# The stop path's time limits, after SIGTERM. The jobs in hand get STOP_JOBS_SECONDS to
# finish; closing the leases and the leadership connections, STOP_CLOSE_SECONDS more;
# by STOP_BOUND_SECONDS the process has exited, whatever hangs (faulthandler's
# watchdog dumps every thread's stack and ends it). supervisord's stopwaitsecs (40)
# and the Kubernetes grace period (50) are above it; tests check they stay so.
STOP_JOBS_SECONDS = 20.0
STOP_LOOPS_SECONDS = 2.0  # the loops see the stop within a second unless stuck
STOP_CLOSE_SECONDS = 3.0
STOP_BOUND_SECONDS = 30.0

# Exit statuses: a loop died of a bug (sysexits EX_SOFTWARE), or jobs were still in
# hand at the time limit and are left for rescue.
EXIT_LOOP_FAILED = 70
EXIT_JOBS_ABANDONED = 1


class StopRequest:
    """How the main thread learns it must stop: a byte on a socket pair.

    A signal writes it through `signal.set_wakeup_fd`, from the interpreter's C
    handler; the Python handler only records the signal number. Nothing on the
    signal path takes a lock or logs, so a signal landing while the main thread
    holds some lock (an Event's, a logging handler's) cannot deadlock. Other
    threads (a failed loop, a test) write the byte themselves."""

    def __init__(self) -> None:
        self._read, self._write = socket.socketpair()
        self._read.setblocking(False)
        self._write.setblocking(False)
        self._requested = False
        self.signum = 0
        # Closed when collected (a Worker of a test), or by close().
        self.close = weakref.finalize(self, _close_all, self._read, self._write)

    def install(self) -> None:
        """SIGTERM and SIGINT request the stop; main thread only."""
        _INSTALLED.append(self)  # the signals' wake-up socket must outlive every signal
        signal.set_wakeup_fd(self._write.fileno(), warn_on_full_buffer=False)
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)

    def on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self.signum = signum  # a flag; the wake-up byte is already written

    def request(self) -> None:
        """From any thread."""
        # A full buffer holds wake-ups enough already; a closed one has no one waiting.
        with contextlib.suppress(OSError):
            self._write.send(b"\0")

    def wait(self, timeout: float | None = None) -> bool:
        """True once a stop was requested (now or before); False after `timeout`."""
        if not self._requested:
            readable, _, _ = select.select([self._read], [], [], timeout)
            if readable:
                with contextlib.suppress(BlockingIOError):
                    while self._read.recv(512):
                        pass
                self._requested = True
        return self._requested

    def is_set(self) -> bool:
        return self.wait(0)


_INSTALLED: list[StopRequest] = []


def _close_all(*sockets: socket.socket) -> None:
    for sock in sockets:
        sock.close()


class StartupError(RuntimeError):
    """The worker cannot run as configured; the message says why and is safe to log."""


def database_password(config: Config) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(config.database_url).get("password") or "")


def open_pool(
    config: Config, stop: threading.Event | StopRequest, attempt_timeout: float = 5.0
) -> ConnectionPool:
    """Opens the pool, waiting for the database as long as it takes (or until `stop`).

    A worker started before its database (a container beside PostgreSQL, a
    restart) should start working when the database does, not give up."""
    delay = 0.5
    while True:
        pool = ConnectionPool(
            config.database_url,
            min_size=config.db_min_conns,
            max_size=config.db_max_conns,
            kwargs={
                "autocommit": True,
                "application_name": f"payment-worker {config.worker_id}",
                **CONNECTION_PARAMS,
            },
            # A pooled connection broken by a server restart is replaced on
            # checkout, instead of failing the job that drew it.
            check=ConnectionPool.check_connection,
            name="worker",
            open=False,
        )
        try:
            pool.open(wait=True, timeout=attempt_timeout)
            return pool
        except PoolTimeout:
            pool.close()
        log.warning("database not reachable yet; waiting", extra={"retry_in_s": delay})
        if stop.wait(delay):
            raise StartupError("stopped while waiting for the database")
        delay = min(delay * 2, 5.0)


class Worker:
    """Runs every loop in a thread of its own and supervises them from the
    thread that calls `run()`: a loop that raises, or returns before the stop,
    stops the worker with a non-zero status, for supervisord to restart it."""

    def __init__(
        self,
        config: Config,
        pool: ConnectionPool,
        stop: StopRequest | threading.Event | None = None,
    ):
        """`stop`: the process's StopRequest, or the Event the loops are to watch
        (set by the supervising thread only, never by a signal handler)."""
        self.config = config
        self.store = Store(pool, config.database_url)
        self.stop_request = stop if isinstance(stop, StopRequest) else StopRequest()
        self.stop = stop if isinstance(stop, threading.Event) else threading.Event()
        self.wake = threading.Event()
        self.failed_loop: str | None = None
        settings = self.store.config_get()
        if settings.currency != config.payment_currency:
            raise StartupError(
                f"currency mismatch: the database charges in {settings.currency} "
                f"(payments.config) but PAYMENT_CURRENCY is {config.payment_currency}; "
                "refusing to start rather than charge in the wrong currency"
            )
        self.queue = settings.queue
        telemetry.JOBS_RESCUED.labels(self.queue)  # at 0 from the start, like the outcomes
        gateway = StripeGateway(
            StripeSettings(
                api_key=config.stripe_api_key,
                api_base=config.stripe_api_base,
                connect_timeout=config.stripe_connect_timeout,
                read_timeout=config.stripe_read_timeout,
                network_retries=config.stripe_network_retries,
            ),
            stop=self.stop,
        )
        kinds = Kinds()
        handlers.register(kinds, self.store, gateway, settings.currency)
        try:
            kinds.check(self.store.job_kind_list())
        except KindMismatch as exc:
            raise StartupError(f"{exc}; deploy the schema that goes with this worker") from None
        for kind in kinds:
            for outcome in ("completed", "retried", "discarded"):
                # Present at 0 from the start, so increase() sees the first one.
                telemetry.JOBS_FINISHED.labels(kind, outcome)
        for kind in handlers.LIFECYCLE_KINDS:
            for result in handlers.OBSERVATION_RESULTS:
                telemetry.OBSERVATIONS.labels(kind, result)
        self.producer = Producer(
            self.store,
            JobExecutor(self.store, kinds),
            worker_id=config.worker_id,
            concurrency=config.concurrency,
            poll_interval=config.poll_interval,
            wake=self.wake,
            stop=self.stop,
        )
        self.listener = InsertListener(config.database_url, self.queue, self.wake, self.stop)
        self.leadership = Leadership(self.store, stop=self.stop, leader_id=config.worker_id)
        self.scheduler = Scheduler(
            self.store, self.leadership, queue=self.queue, wake=self.wake, stop=self.stop
        )
        self.rescuer = Rescuer(
            self.store,
            self.leadership,
            queue=self.queue,
            stop=self.stop,
            stuck_after=config.rescue_after,
        )
        self.cleaner = Cleaner(
            self.store,
            self.leadership,
            queue=self.queue,
            stop=self.stop,
            completed_retention=config.completed_retention,
            discarded_retention=config.discarded_retention,
        )
        self.queue_keeper = QueueKeeper(
            self.store, self.leadership, queue=self.queue, stop=self.stop
        )
        self.reconciler = Reconciler(
            self.store,
            self.leadership,
            queue=self.queue,
            stop=self.stop,
            after=config.reconcile_after,
            rate=config.reconcile_rate,
        )
        self.backfill = Backfill(
            self.store,
            self.leadership,
            gateway,
            queue=self.queue,
            stop=self.stop,
            interval=config.backfill_interval,
        )

    def request_stop(self) -> None:
        """From any thread; the stop itself happens in the thread running `run()`."""
        self.stop_request.request()

    def loops(self) -> dict[str, Callable[[], None]]:
        return {
            "producer": self.producer.run,
            "listener": self.listener.run,
            "leadership": self.leadership.run,
            "scheduler": self.scheduler.run,
            "rescuer": self.rescuer.run,
            "cleaner": self.cleaner.run,
            "queue keeper": self.queue_keeper.run,
            "reconciler": self.reconciler.run,
            "backfill": self.backfill.run,
        }

    def run(self, *, watchdog: bool = False) -> int:
        """Runs until a stop is requested or a loop fails; returns the exit status.

        `watchdog` (the process's own worker): once stopping, faulthandler ends
        the process at STOP_BOUND_SECONDS, dumping every thread's stack."""
        loops = self.loops()
        for name in loops:
            telemetry.loop_beat(name)  # a loop that never gets going shows as stale
        threads = [
            threading.Thread(target=self._supervised, args=(n, f), name=n, daemon=True)
            for n, f in loops.items()
        ]
        for thread in threads:
            thread.start()
        telemetry.WORKERS_UP.set(1)
        log.info(
            "worker started",
            extra={
                "queue": self.queue,
                "worker_id": self.config.worker_id,
                "concurrency": self.config.concurrency,
                "currency": self.config.payment_currency,
                "stripe_api_base": self.config.stripe_api_base or "Stripe",
            },
        )
        self.stop_request.wait()
        if watchdog:
            faulthandler.dump_traceback_later(STOP_BOUND_SECONDS, exit=True)
        return self._shut_down(threads)

    def _supervised(self, name: str, loop: Callable[[], None]) -> None:
        try:
            loop()
        except BaseException as exc:
            self._loop_failed(name, f"{type(exc).__name__}: {exc}", exc)
            return
        if not self.stop.is_set():
            self._loop_failed(name, "returned before the worker was stopped", None)
            return
        telemetry.loop_ended(name)

    def _loop_failed(self, name: str, what: str, exc: BaseException | None) -> None:
        if self.failed_loop is None:
            self.failed_loop = name
        log.critical(
            "%s loop failed: %s; stopping the worker for supervisord to restart it",
            name,
            what,
            exc_info=exc,
            extra={"loop": name},
        )
        self.stop_request.request()

    def _shut_down(self, threads: list[threading.Thread]) -> int:
        """Stops claiming, waits for the jobs in hand until STOP_JOBS_SECONDS, then
        closes; every wait has a limit, and reaching one dumps all thread stacks."""
        deadline = time.monotonic() + STOP_JOBS_SECONDS
        log.info(
            "stopping: finishing the jobs in hand",
            extra={
                "signal": self.stop_request.signum,
                "in_flight": self.producer.in_flight,
                "failed_loop": self.failed_loop,
            },
        )
        self.stop.set()
        self.wake.set()
        loops_deadline = min(deadline, time.monotonic() + STOP_LOOPS_SECONDS)
        for thread in threads:
            thread.join(max(0.0, loops_deadline - time.monotonic()))
        stuck = [t.name for t in threads if t.is_alive()]
        drained = self.producer.drain(deadline - time.monotonic())
        self.producer.shutdown()
        telemetry.WORKERS_UP.set(0)
        abandoned = self.producer.in_flight
        if stuck or not drained:
            log.error(
                "stop time limit reached: jobs still in hand are left to be rescued "
                "(their leases end with this process); thread stacks follow",
                extra={"in_flight": abandoned, "stuck_loops": stuck, "limit_s": STOP_JOBS_SECONDS},
            )
            faulthandler.dump_traceback(all_threads=True)
        # Leases of jobs finished above went with their outcomes; closing
        # gives up the leadership at once instead of at process exit.
        if not self.store.close(timeout=STOP_CLOSE_SECONDS):
            log.error(
                "database connections still busy at the stop time limit; "
                "they end with the process; thread stacks follow",
                extra={"limit_s": STOP_CLOSE_SECONDS},
            )
            faulthandler.dump_traceback(all_threads=True)
        log.info("worker stopped", extra={"in_flight": abandoned})
        if self.failed_loop is not None:
            return EXIT_LOOP_FAILED
        return EXIT_JOBS_ABANDONED if abandoned or stuck else 0


def flush_and_exit(status: int) -> None:
    """Ends the process now: no waiting for threads still in a job or a stuck
    statement (the interpreter's exit would join the job threads)."""
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(status)
