"""Worker parts wired to this test's database and the stand-in, without the process around them."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, replace

import pytest
from psycopg_pool import ConnectionPool

from stripe_standin.process import StandinProcess
from worker.config import Config
from worker.executor import JobExecutor
from worker.handlers import CreatePaymentIntent
from worker.service import Worker
from worker.store import Store
from worker.stripe_gateway import StripeGateway, StripeSettings

API_KEY = "sk_test_payment_worker_tests"


def worker_config(database_url: str, standin_url: str, **changes: object) -> Config:
    env = {
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin_url,
        "STRIPE_READ_TIMEOUT": "5",
        "WORKER_ID": "test-worker",
    }
    return replace(Config.from_env(env), **changes)  # type: ignore[arg-type]


@pytest.fixture
def pool(database_url: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(
        database_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True
    ) as p:
        yield p


@pytest.fixture
def store(pool: ConnectionPool) -> Iterator[Store]:
    s = Store(pool)
    yield s
    s.close()


@pytest.fixture
def gateway(standin: StandinProcess) -> StripeGateway:
    return StripeGateway(
        # One attempt, one request: these tests look at what the queue does
        # with each failure. The SDK's own retries have a test of their own.
        StripeSettings(
            api_key=API_KEY,
            api_base=standin.url,
            connect_timeout=2,
            read_timeout=5,
            network_retries=0,
        )
    )


@pytest.fixture
def executor(store: Store, gateway: StripeGateway) -> JobExecutor:
    handler = CreatePaymentIntent(store, gateway, "USD")
    return JobExecutor(store, {handler.kind: handler})


@dataclass
class RunningWorker:
    worker: Worker
    thread: threading.Thread

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "worker did not stop"


@pytest.fixture
def running_worker(
    database_url: str, standin: StandinProcess, pool: ConnectionPool
) -> Iterator[RunningWorker]:
    """A whole Worker (listener, scheduler, producer) in a thread of this process."""
    worker = Worker(worker_config(database_url, standin.url), pool)
    thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
    thread.start()
    assert worker.listener.listening.wait(5), "worker did not start listening"
    running = RunningWorker(worker, thread)
    yield running
    running.stop()
