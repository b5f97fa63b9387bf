"""Wires config, database, Stripe and the loops together; the process lifecycle."""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType

import psycopg.conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from worker.config import Config
from worker.executor import JobExecutor
from worker.handlers import CreatePaymentIntent
from worker.listener import InsertListener
from worker.producer import Producer
from worker.scheduler import Scheduler
from worker.store import Store
from worker.stripe_gateway import StripeGateway, StripeSettings

log = logging.getLogger("worker")


class StartupError(RuntimeError):
    """The worker cannot start; the message says why and is safe to log."""


def database_password(config: Config) -> str:
    return str(psycopg.conninfo.conninfo_to_dict(config.database_url).get("password") or "")


def open_pool(config: Config, timeout: float = 10.0) -> ConnectionPool:
    pool = ConnectionPool(
        config.database_url,
        min_size=config.db_min_conns,
        max_size=config.db_max_conns,
        kwargs={"autocommit": True, "application_name": f"payment-worker {config.worker_id}"},
        name="worker",
        open=False,
    )
    try:
        pool.open(wait=True, timeout=timeout)
    except PoolTimeout:
        pool.close()
        raise StartupError(f"cannot connect to the database within {timeout:g} s") from None
    return pool


class Worker:
    def __init__(self, config: Config, pool: ConnectionPool) -> None:
        self.config = config
        self.store = Store(pool)
        self.stop = threading.Event()
        self.wake = threading.Event()
        settings = self.store.config_get()
        if settings.currency != config.payment_currency:
            raise StartupError(
                f"currency mismatch: the database charges in {settings.currency} "
                f"(payments.config) but PAYMENT_CURRENCY is {config.payment_currency}; "
                "refusing to start rather than charge in the wrong currency"
            )
        self.queue = settings.queue
        gateway = StripeGateway(
            StripeSettings(
                api_key=config.stripe_api_key,
                api_base=config.stripe_api_base,
                connect_timeout=config.stripe_connect_timeout,
                read_timeout=config.stripe_read_timeout,
            )
        )
        handler = CreatePaymentIntent(self.store, gateway, settings.currency)
        self.producer = Producer(
            self.store,
            JobExecutor(self.store, {handler.kind: handler}),
            queue=self.queue,
            worker_id=config.worker_id,
            concurrency=config.concurrency,
            poll_interval=config.poll_interval,
            wake=self.wake,
            stop=self.stop,
        )
        self.listener = InsertListener(config.database_url, self.queue, self.wake, self.stop)
        self.scheduler = Scheduler(self.store, queue=self.queue, wake=self.wake, stop=self.stop)

    def request_stop(self, signum: int = 0, _frame: FrameType | None = None) -> None:
        if not self.stop.is_set():
            log.info("stopping: finishing the jobs in hand", extra={"signal": signum})
        self.stop.set()
        self.wake.set()

    def run(self) -> None:
        threads = [
            threading.Thread(target=self.listener.run, name="listener", daemon=True),
            threading.Thread(target=self.scheduler.run, name="scheduler", daemon=True),
        ]
        for thread in threads:
            thread.start()
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
        self.producer.run()
        for thread in threads:
            thread.join(timeout=5)
        log.info("worker stopped")


def install_signal_handlers(worker: Worker) -> None:
    signal.signal(signal.SIGTERM, worker.request_stop)
    signal.signal(signal.SIGINT, worker.request_stop)
