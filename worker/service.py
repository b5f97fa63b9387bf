"""Wires config, database, Stripe and the loops together; the process lifecycle."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import psycopg.conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from worker import handlers, telemetry
from worker.config import Config
from worker.executor import JobExecutor
from worker.jobs import KindMismatch, Kinds
from worker.listener import InsertListener
from worker.maintenance import Cleaner, Leadership, QueueKeeper, Rescuer, Scheduler
from worker.producer import Producer
from worker.store import KEEPALIVE_PARAMS, Store
from worker.stripe_gateway import StripeGateway, StripeSettings

log = logging.getLogger("worker")


class StartupError(RuntimeError):
    """The worker cannot run as configured; the message says why and is safe to log."""


def database_password(config: Config) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(config.database_url).get("password") or "")


def open_pool(
    config: Config, stop: threading.Event, attempt_timeout: float = 5.0
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
                **KEEPALIVE_PARAMS,
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
    def __init__(self, config: Config, pool: ConnectionPool, stop: threading.Event | None = None):
        self.config = config
        self.store = Store(pool, config.database_url)
        self.stop = stop or threading.Event()
        self.wake = threading.Event()
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
            )
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

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if not self.stop.is_set():
            log.info("stopping: finishing the jobs in hand", extra={"signal": signum})
        self.stop.set()
        self.wake.set()

    def run(self) -> None:
        loops = {
            "listener": self.listener.run,
            "leadership": self.leadership.run,
            "scheduler": self.scheduler.run,
            "rescuer": self.rescuer.run,
            "cleaner": self.cleaner.run,
            "queue keeper": self.queue_keeper.run,
        }
        threads = [threading.Thread(target=f, name=n, daemon=True) for n, f in loops.items()]
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
        try:
            self.producer.run()
        finally:
            telemetry.WORKERS_UP.set(0)
            for thread in threads:
                thread.join(timeout=5)
            # Leases of jobs finished above went with their outcomes; closing
            # gives up the leadership at once instead of at process exit.
            self.store.close()
        log.info("worker stopped")


def install_signal_handlers(worker: Worker) -> None:
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
