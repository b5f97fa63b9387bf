"""A whole Worker (in a thread of this process) recovering from what kills workers: a dead
peer, lost database connections, a crash after Stripe answered, a late start, a stop.

Timings are printed (pytest -s) and bounded loosely: the bounds catch a recovery that waits
for a timeout it should not need, not a slow machine."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from stripe_standin.process import StandinProcess
from tests import pg
from tests.integration.conftest import RunningWorker, worker_config
from tests.integration.rows import claim, insert_payment, job_of, leader_pid, payment_row
from tests.integration.waiting import wait_until
from worker.maintenance import RESCUE_ERROR
from worker.models import Job
from worker.service import Worker, open_pool
from worker.store import Store
from worker.stripe_gateway import StripeGateway


def status(conn: psycopg.Connection, payment_id: UUID) -> str:
    return str(payment_row(conn, payment_id)["status"])


def claim_as_another_worker(conn: psycopg.Connection, store: Store) -> tuple[UUID, Job]:
    """A payment whose job `store` claims with the real claim, leased on its own connection,
    before any other worker runs: it is `running`, exactly as a live worker leaves it."""
    payment_id = insert_payment(conn)
    job = claim(store, "dead-worker")
    assert job.lease_token is not None
    assert job.args == {"payment_id": str(payment_id)}
    return payment_id, job


def intents_for(standin: StandinProcess, payment_id: UUID) -> list[dict[str, Any]]:
    return standin.admin.intents_with_metadata("payment_id", str(payment_id))


# --- a peer's death --------------------------------------------------------------------------


StartWorker = Callable[[], RunningWorker]


@pytest.fixture
def start_late(
    database_url: str, standin: StandinProcess, pool: ConnectionPool
) -> Iterator[StartWorker]:
    """Starts a whole Worker when the test says so (after another worker's claim); every
    one started is stopped at the end."""
    started: list[RunningWorker] = []

    def start() -> RunningWorker:
        running = RunningWorker.start(Worker(worker_config(database_url, standin.url), pool))
        started.append(running)
        return running

    yield start
    for running in started:
        running.stop()


def test_a_job_whose_worker_died_is_run_again_by_a_live_worker(
    conn: psycopg.Connection, store: Store, standin: StandinProcess, start_late: StartWorker
) -> None:
    payment_id, job = claim_as_another_worker(conn, store)
    running_worker = start_late()
    # Alive, its lease keeps the running worker (the leader: it is alone) off the job.
    wait_until(lambda: running_worker.worker.leadership.held, 5, "the worker leads")
    assert running_worker.worker.rescuer.run_once() == 0
    assert job_of(conn, payment_id)["state"] == "running"

    store.close()
    elapsed = wait_until(
        lambda: status(conn, payment_id) == "pending", 10, "the dead worker's payment pending"
    )

    print(f"\nrun again after its worker died: {elapsed * 1000:.0f} ms")
    (intent,) = intents_for(standin, payment_id)
    stored = payment_row(conn, payment_id)
    assert stored["provider_payment_id"] == intent["id"]
    assert stored["provider_client_secret"] == intent["client_secret"]
    row = job_of(conn, payment_id)
    assert (row["state"], row["attempt"]) == ("completed", 2)
    assert row["attempted_by"] == ["dead-worker", "test-worker"]
    assert [entry["error"] for entry in row["errors"]] == [RESCUE_ERROR]
    assert row["id"] == job.id
    # Rescued as River does: the second attempt waited River's first backoff (1 s ±10 %).
    rescued_at = datetime.fromisoformat(row["errors"][0]["at"])
    assert row["attempted_at"] - rescued_at >= timedelta(seconds=0.9)


def test_a_worker_that_died_after_stripe_answered_is_replayed_not_charged_twice(
    conn: psycopg.Connection,
    store: Store,
    gateway: StripeGateway,
    standin: StandinProcess,
    start_late: StartWorker,
) -> None:
    """The other worker created the intent at Stripe, then died before its database update:
    the rescue runs the job again with the same idempotency key, and Stripe replays."""
    payment_id, job = claim_as_another_worker(conn, store)
    start_late()
    found = store.job_payment_get(job)
    assert found is not None
    created = gateway.create_payment_intent(found)
    assert status(conn, payment_id) == "pending_intent"

    store.close()
    elapsed = wait_until(
        lambda: status(conn, payment_id) == "pending", 10, "the payment pending after the replay"
    )

    print(f"\nreplayed after a death past Stripe: {elapsed * 1000:.0f} ms")
    (intent,) = intents_for(standin, payment_id)
    assert intent["id"] == created.provider_payment_id
    stored = payment_row(conn, payment_id)
    assert stored["provider_payment_id"] == created.provider_payment_id
    assert stored["provider_client_secret"] == created.client_secret == intent["client_secret"]
    stats = standin.admin.stats()
    assert (stats["payment_intents_created"], stats["idempotent_replays"]) == (1, 1)
    row = job_of(conn, payment_id)
    assert (row["state"], row["attempt"]) == ("completed", 2)


# --- lost database connections ---------------------------------------------------------------


@pytest.fixture(params=[1.0, 30.0], ids=["poll-1s", "poll-30s"])
def pooled_worker(
    request: pytest.FixtureRequest, database_url: str, standin: StandinProcess
) -> Iterator[RunningWorker]:
    """A Worker on the pool `python -m worker` opens (open_pool: checked on checkout). With a
    long WORKER_POLL_INTERVAL too: recovery must not wait for the next catch-up poll."""
    config = worker_config(database_url, standin.url, poll_interval=request.param)
    stop = threading.Event()
    pool = open_pool(config, stop)
    try:
        running = RunningWorker.start(Worker(config, pool, stop))
        yield running
        running.stop()
    finally:
        stop.set()
        pool.close()


def terminate_all_but_me(conn: psycopg.Connection) -> list[str]:
    """Ends every other session of this database, waiting for each; their application names."""
    rows = conn.execute(
        "SELECT application_name, pg_terminate_backend(pid, 5000) FROM pg_stat_activity"
        " WHERE datname = current_database() AND pid <> pg_backend_pid()"
    ).fetchall()
    assert all(terminated for _, terminated in rows)
    return sorted(name for name, _ in rows)


def leads(conn: psycopg.Connection) -> bool:
    """Whether a live leader connection of a worker holds the maintenance leadership."""
    pid = leader_pid(conn)
    if pid is None:
        return False
    row = conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return row == ("payment-worker leader",)


def test_a_worker_that_loses_all_its_database_connections_carries_on(
    conn: psycopg.Connection, standin: StandinProcess, pooled_worker: RunningWorker
) -> None:
    warm_up = insert_payment(conn)
    wait_until(lambda: status(conn, warm_up) == "pending", 5, "first payment pending")
    times = []
    for _ in range(2):
        killed = terminate_all_but_me(conn)
        for name in ("payment-worker leases", "payment-worker leader", "payment-worker listener"):
            assert name in killed
        assert "payment-worker test-worker" in killed  # the pool's

        payment_id = insert_payment(conn)
        times.append(
            wait_until(
                lambda p=payment_id: status(conn, p) == "pending", 5, "pending after the loss"
            )
        )
        assert len(intents_for(standin, payment_id)) == 1
        # And it leads again: the maintenance is not lost with the leader connection.
        wait_until(lambda: leads(conn), 5, "leadership taken again")

    print("\npending after losing every connection: " + ", ".join(f"{t:.2f} s" for t in times))
    assert pooled_worker.thread.is_alive()
    jobs = conn.execute("SELECT state, count(*) FROM metadata.river_job GROUP BY 1").fetchall()
    assert jobs == [("completed", 3)]


def test_a_payment_recorded_while_the_listener_is_away_is_not_missed(
    conn: psycopg.Connection, standin: StandinProcess, pooled_worker: RunningWorker
) -> None:
    """Only the listening connection dies, and the database refuses new connections until
    the payment is committed: its NOTIFY reaches nobody. The catch-up claim the listener
    makes once it is back finds the payment (with a 30 s poll, nothing else would)."""
    listener = pooled_worker.worker.listener
    (pid,) = [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()"
            " AND application_name = 'payment-worker listener'"
        )
    ]
    allow = sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS {}").format
    database = sql.Identifier(conn.info.dbname)
    # Not from a session of the database itself: PostgreSQL refuses that.
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
        admin.execute(allow(database, sql.SQL("false")))
        try:
            terminated = conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
            assert terminated == (True,)
            wait_until(lambda: not listener.listening.is_set(), 5, "the listener noticed")
            payment_id = insert_payment(conn)
        finally:
            admin.execute(allow(database, sql.SQL("true")))
    back = time.monotonic()

    wait_until(lambda: status(conn, payment_id) == "pending", 5, "pending")

    print(f"\npending {time.monotonic() - back:.2f} s after the listener could reconnect")
    assert listener.listening.is_set()
    assert len(intents_for(standin, payment_id)) == 1


# --- a late start ----------------------------------------------------------------------------


def test_jobs_inserted_while_no_worker_runs_are_done_soon_after_one_starts(
    conn: psycopg.Connection, database_url: str, standin: StandinProcess, pool: ConnectionPool
) -> None:
    payments = [insert_payment(conn) for _ in range(20)]

    def all_pending() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM payments.transactions WHERE status = 'pending' AND id = ANY(%s)",
            (payments,),
        ).fetchone()
        return row == (20,)

    started = time.monotonic()
    running = RunningWorker.start(Worker(worker_config(database_url, standin.url), pool))
    try:
        wait_until(all_pending, 5, "all 20 payments pending")
        elapsed = time.monotonic() - started
    finally:
        running.stop()

    print(f"\n20 payments waiting at start-up, all pending after {elapsed:.2f} s")
    assert elapsed < 5
    assert standin.admin.stats()["payment_intents_created"] == 20
    for payment_id in payments:
        assert len(intents_for(standin, payment_id)) == 1


# --- stopping with a job in hand --------------------------------------------------------------


def test_a_stop_request_finishes_the_job_in_hand_and_claims_nothing_more(
    conn: psycopg.Connection, standin: StandinProcess, running_worker: RunningWorker
) -> None:
    standin.admin.configure(latency_ms=1000)
    in_hand = insert_payment(conn)
    wait_until(lambda: job_of(conn, in_hand)["state"] == "running", 5, "the job running")

    running_worker.worker.request_stop()
    stop_requested = time.monotonic()
    after_stop = insert_payment(conn)

    # The Stripe call takes a second: the worker is still there, finishing it.
    assert running_worker.thread.is_alive()
    running_worker.thread.join(timeout=10)
    assert not running_worker.thread.is_alive(), "worker did not stop"
    stopped_after = time.monotonic() - stop_requested

    print(f"\nstopped {stopped_after:.2f} s after the request, its job done")
    stored = payment_row(conn, in_hand)
    assert stored["status"] == "pending"
    (intent,) = intents_for(standin, in_hand)
    assert stored["provider_client_secret"] == intent["client_secret"]
    row = job_of(conn, in_hand)
    assert (row["state"], row["attempt"]) == ("completed", 1)
    untouched = job_of(conn, after_stop)
    assert (untouched["state"], untouched["attempt"], untouched["attempted_by"]) == (
        "available",
        0,
        None,
    )
    assert status(conn, after_stop) == "pending_intent"
    assert standin.admin.stats()["requests"]["total"] == 1
    # Its lease and leadership connections went with it, at once.
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND application_name IN ('payment-worker leases', 'payment-worker leader')"
            ).fetchone()
            == (0,)
        ),
        5,
        "lease and leader connections closed",
    )


# --- River's pause -----------------------------------------------------------------------------


def test_a_queue_paused_in_river_ui_is_worked_again_once_resumed(
    conn: psycopg.Connection, store: Store, standin: StandinProcess, running_worker: RunningWorker
) -> None:
    conn.execute("UPDATE metadata.river_queue SET paused_at = now() WHERE name = 'payments'")
    payment_id = insert_payment(conn)
    # The worker was woken by the insert; its claim, like this one, finds nothing.
    assert store.job_get_available(10, "probe") == []
    assert job_of(conn, payment_id)["state"] == "available"

    conn.execute("UPDATE metadata.river_queue SET paused_at = NULL WHERE name = 'payments'")
    # Nothing wakes it but its catch-up poll (WORKER_POLL_INTERVAL, 1 s).
    wait_until(lambda: status(conn, payment_id) == "pending", 5, "the payment pending")

    assert len(intents_for(standin, payment_id)) == 1
