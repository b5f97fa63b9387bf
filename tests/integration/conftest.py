"""Worker parts wired to this test's database and the stand-in, without the process around them."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from stripe_standin.process import StandinProcess
from tests import pg

# The stand-in flows' own stand-in, webhooks and SDK (tests/integration/standin_flows.py).
from tests.integration.standin_flows import (  # noqa: F401
    hooked_admin,
    hooked_client,
    hooked_standin,
    hooked_standin_process,
    hooks,
)
from worker import handlers
from worker.config import Config
from worker.executor import JobExecutor
from worker.jobs import Kinds
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
    kinds = Kinds()
    handlers.register(kinds, store, gateway, "USD")
    return JobExecutor(store, kinds)


@dataclass
class RunningWorker:
    worker: Worker
    thread: threading.Thread

    @classmethod
    def start(cls, worker: Worker) -> RunningWorker:
        """Runs the worker in a thread of this process, once it listens."""
        thread = threading.Thread(target=worker.run, name="test-worker", daemon=True)
        thread.start()
        assert worker.listener.listening.wait(10), "worker did not start listening"
        return cls(worker, thread)

    def stop(self) -> None:
        self.worker.request_stop()
        self.thread.join(timeout=10)
        assert not self.thread.is_alive(), "worker did not stop"


@contextmanager
def worker_running_at(database_url: str, standin_url: str) -> Iterator[RunningWorker]:
    """A whole Worker with a pool of its own on `database_url` (another login, say)."""
    with ConnectionPool(
        database_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True
    ) as pool:
        running = RunningWorker.start(Worker(worker_config(database_url, standin_url), pool))
        try:
            yield running
        finally:
            running.stop()


@pytest.fixture
def running_worker(
    database_url: str, standin: StandinProcess, pool: ConnectionPool
) -> Iterator[RunningWorker]:
    """A whole Worker (listener, scheduler, producer) in a thread of this process."""
    running = RunningWorker.start(Worker(worker_config(database_url, standin.url), pool))
    yield running
    running.stop()


MakeRole = Callable[..., str]


@pytest.fixture
def login_role(database_url: str) -> Iterator[MakeRole]:
    """Creates LOGIN roles granted the given groups; drops them at the end (cluster-wide)."""
    created: list[str] = []
    with psycopg.connect(database_url, autocommit=True) as admin:

        def make(*groups: str) -> str:
            name = f"pw_test_{uuid4().hex[:12]}"
            admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
            created.append(name)
            for group in groups:
                admin.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
                )
            return name

        yield make
        for name in created:
            # Sessions of the role end with their fixtures; wait for the server to see it.
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def role_url(database_url: str, role: str) -> str:
    return pg.url(str(conninfo_to_dict(database_url)["dbname"]), user=role)


def connect_as(database_url: str, role: str) -> psycopg.Connection:
    return psycopg.connect(role_url(database_url, role), autocommit=True)
