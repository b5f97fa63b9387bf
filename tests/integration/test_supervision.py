"""A whole Worker (in a thread of this process) when one of its loops breaks, and its stop
when something on the stop path would wait forever: a job stuck in Stripe, a statement
stuck on a lock, a retry's pause. Real PostgreSQL, the real SDK against the stand-in."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from stripe_standin.client import api_error
from stripe_standin.process import StandinProcess
from tests.integration.conftest import API_KEY, RunningWorker, worker_config
from tests.integration.rows import insert_payment, job_of, payment_row
from tests.integration.waiting import wait_until
from worker import service
from worker.models import Payment
from worker.service import EXIT_JOBS_ABANDONED, EXIT_LOOP_FAILED, Worker
from worker.store import DedicatedConnection, NotificationConnection
from worker.stripe_gateway import StripeFailure, StripeGateway, StripeSettings

ROOT = Path(__file__).resolve().parents[2]
LOOPS = [
    "producer",
    "listener",
    "leadership",
    "scheduler",
    "rescuer",
    "cleaner",
    "reconciler",
    "backfill",
]


class Injected(RuntimeError):
    """A bug in a loop, as the loop would meet it."""


@pytest.fixture
def make_worker(
    database_url: str, standin: StandinProcess, pool: ConnectionPool
) -> Iterator[Worker]:
    """A Worker not yet running; whatever the test leaves running is stopped at the end."""
    worker = Worker(worker_config(database_url, standin.url, stripe_read_timeout=30.0), pool)
    yield worker
    worker.request_stop()


def run_in_thread(worker: Worker) -> tuple[threading.Thread, list[int]]:
    """Runs the worker; the list gets run()'s exit status when it returns."""
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(worker.run()), daemon=True)
    thread.start()
    assert worker.listener.listening.wait(10), "worker did not start listening"
    return thread, status


def session_waiting_on_a_lock(conn: psycopg.Connection, application_name: str) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
        " AND wait_event_type = 'Lock'",
        (application_name,),
    ).fetchone()
    return row is not None and row[0] > 0


# --- a loop that breaks --------------------------------------------------------------------


@pytest.mark.parametrize("loop", LOOPS)
def test_a_loop_that_raises_ends_the_worker_with_one_clear_line(
    make_worker: Worker, loop: str, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker
    part = getattr(worker, loop)
    raised = threading.Event()

    def broken(*_args: object, **_kwargs: object) -> int:
        raised.set()
        raise Injected(f"injected into the {loop} loop")

    # The cleaner's and the backfill's own intervals are minutes; the others come round
    # within a second.
    if loop in ("cleaner", "backfill"):
        part.interval = 0.2
    part.run_once = broken
    caplog.set_level(logging.INFO, logger="worker")
    status: list[int] = []
    thread = threading.Thread(target=lambda: status.append(worker.run()), daemon=True)
    thread.start()
    assert raised.wait(10), f"the {loop} loop never ran"
    thread.join(service.STOP_LOOPS_SECONDS + service.STOP_CLOSE_SECONDS + 5)
    assert not thread.is_alive(), "the worker did not stop after its loop failed"
    assert status == [EXIT_LOOP_FAILED]
    assert worker.failed_loop == loop
    critical = [r for r in caplog.records if r.levelno == logging.CRITICAL]
    assert len(critical) == 1, [r.getMessage() for r in critical]
    assert critical[0].getMessage() == (
        f"{loop} loop failed: Injected: injected into the {loop} loop; "
        "stopping the worker for supervisord to restart it"
    )
    assert critical[0].exc_info is not None  # the traceback, on that same line
    # The other loops ended with the stop, none of them stuck.
    assert not [r for r in caplog.records if "stop time limit reached" in r.getMessage()]


def test_a_loop_that_returns_before_the_stop_is_a_failure_too(
    make_worker: Worker, caplog: pytest.LogCaptureFixture
) -> None:
    worker = make_worker
    worker.listener.run = lambda: None  # type: ignore[method-assign]
    thread = threading.Thread(target=worker.run, daemon=True)
    thread.start()
    thread.join(service.STOP_LOOPS_SECONDS + service.STOP_CLOSE_SECONDS + 5)
    assert not thread.is_alive()
    assert worker.failed_loop == "listener"
    assert "listener loop failed: returned before the worker was stopped" in caplog.text


# --- the stop path's waits -----------------------------------------------------------------


def test_a_stop_with_a_job_stuck_in_stripe_ends_at_the_limit_and_the_job_is_rescued_once(
    *,
    make_worker: Worker,
    conn: psycopg.Connection,
    database_url: str,
    standin: StandinProcess,
    pool: ConnectionPool,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    # The jobs' limit shortened for the test; the slow answer comes well after it.
    monkeypatch.setattr(service, "STOP_JOBS_SECONDS", 1.0)
    worker = make_worker
    thread, status = run_in_thread(worker)
    standin.admin.configure(latency_ms=6000)
    payment_id = insert_payment(conn)
    wait_until(lambda: standin.admin.stats()["requests"]["total"] >= 1, 10, "no Stripe request")
    standin.admin.configure(latency_ms=0)  # the request in flight keeps its 6 s
    assert job_of(conn, payment_id)["state"] == "running"

    stopped_at = time.monotonic()
    worker.request_stop()
    thread.join(10)
    took = time.monotonic() - stopped_at
    assert not thread.is_alive()
    assert status == [EXIT_JOBS_ABANDONED]
    assert took < 1.0 + service.STOP_CLOSE_SECONDS + 1.0, f"the stop took {took:.1f} s"
    err = capfd.readouterr().err
    assert "Thread 0x" in err and "create_payment_intent" in err, "no stack dump"

    # The Stripe request ends at the stand-in (it creates the intent); the abandoned
    # attempt's own outcome is refused: its lease connection is closed.
    wait_until(lambda: standin.admin.stats()["payment_intents_created"] == 1, 10, "the slow create")
    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    rescuer = RunningWorker.start(
        Worker(worker_config(database_url, standin.url, worker_id="rescuer"), pool)
    )
    try:
        wait_until(lambda: status_of(conn, payment_id) == "pending", 15, "the rescued job")
    finally:
        rescuer.stop()
    job = job_of(conn, payment_id)
    assert job["state"] == "completed"
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1
    stats = standin.admin.stats()
    assert (stats["payment_intents_created"], stats["idempotent_replays"]) == (1, 1)


def status_of(conn: psycopg.Connection, payment_id: UUID) -> str:
    return str(payment_row(conn, payment_id)["status"])


def test_a_stop_with_no_job_but_a_statement_stuck_on_a_lock_ends_within_its_limits(
    make_worker: Worker,
    conn: psycopg.Connection,
    database_url: str,
    capfd: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The hang CI saw: no job in hand, yet the stop waited for a lock a stuck statement
    held (DedicatedConnection.close() behind execute()). Here the leader's election waits
    on a table lock; the stop must not wait for it beyond its limits."""
    with psycopg.connect(database_url) as blocker:
        blocker.execute("LOCK TABLE payments.worker_leader IN ACCESS EXCLUSIVE MODE")
        thread, status = run_in_thread(make_worker)
        wait_until(
            lambda: session_waiting_on_a_lock(conn, "payment-worker leader"),
            10,
            "the leader's election waiting on the lock",
        )
        stopped_at = time.monotonic()
        make_worker.request_stop()
        thread.join(service.STOP_LOOPS_SECONDS + service.STOP_CLOSE_SECONDS + 5)
        took = time.monotonic() - stopped_at
        assert not thread.is_alive(), "the stop waited for the stuck statement"
        blocker.rollback()
    # Once the lock is gone the election returns and the connection can be closed.
    assert make_worker.store.close(timeout=5)
    assert status == [EXIT_JOBS_ABANDONED]
    assert took < service.STOP_LOOPS_SECONDS + service.STOP_CLOSE_SECONDS + 1.0
    [limit] = [r for r in caplog.records if "stop time limit reached" in r.getMessage()]
    assert limit.__dict__["stuck_loops"] == ["leadership"]
    assert limit.__dict__["in_flight"] == 0
    assert any("connections still busy" in r.getMessage() for r in caplog.records)
    assert "leader_elect" in capfd.readouterr().err  # where it hangs, in the stack dump


def test_closing_a_dedicated_connection_gives_up_on_a_statement_that_holds_it(
    database_url: str, conn: psycopg.Connection
) -> None:
    connection = DedicatedConnection(database_url, "payment-worker test-stuck")
    connection.execute("SELECT 1", {})
    cancelled = threading.Event()

    def sleep() -> None:
        try:
            connection.execute("SELECT pg_sleep(30)", {})
        except psycopg.errors.QueryCanceled:
            cancelled.set()

    stuck = threading.Thread(target=sleep, daemon=True)
    stuck.start()
    wait_until(
        lambda: (
            conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE '%%pg_sleep%%'",
                ("payment-worker test-stuck",),
            ).fetchone()
            == (1,)
        ),
        5,
        "the statement running",
    )
    started = time.monotonic()
    assert connection.close(timeout=0.3) is False
    assert time.monotonic() - started < 1.0
    with pytest.raises(TimeoutError):
        connection.execute("SELECT 1", {}, wait=0.1)
    conn.execute(
        "SELECT pg_cancel_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
        ("payment-worker test-stuck",),
    )
    stuck.join(5)
    assert cancelled.is_set()
    assert connection.close(timeout=1) is True


def test_a_stopping_worker_does_not_wait_out_a_retry_pause(standin: StandinProcess) -> None:
    settings = StripeSettings(
        api_key=API_KEY, api_base=standin.url, connect_timeout=2, read_timeout=5, network_retries=2
    )
    stop = threading.Event()
    payment = _payment()

    # Running: a 500 is repeated twice within the attempt, after 0.5 and 1 s. Stripe would
    # save a 500 that began executing and replay it, which ends the retries at once; here
    # the pauses are what is tested, so the stand-in releases the key on a 500 instead.
    standin.admin.configure(save_5xx=False)
    standin.admin.script([api_error()] * 3)
    with pytest.raises(StripeFailure):
        StripeGateway(settings, stop).create_payment_intent(payment)
    assert standin.admin.stats()["requests"]["total"] == 3

    standin.admin.reset()
    standin.admin.configure(save_5xx=False)
    standin.admin.script([api_error()] * 3)
    stop.set()
    started = time.monotonic()
    with pytest.raises(StripeFailure) as failed:
        StripeGateway(settings, stop).create_payment_intent(payment)
    assert time.monotonic() - started < 0.5
    assert failed.value.retry_now and not failed.value.permanent  # the queue retries it
    assert standin.admin.stats()["requests"]["total"] == 1


def _payment() -> Payment:
    return Payment(
        id=uuid4(),
        amount=2500,
        currency="USD",
        description=None,
        status="pending_intent",
        provider_payment_id=None,
    )


# --- dead sessions -------------------------------------------------------------------------


SERVER_SETTINGS = (
    "SELECT current_setting('tcp_keepalives_idle') AS idle,"
    " current_setting('tcp_keepalives_interval') AS interval,"
    " current_setting('tcp_keepalives_count') AS count,"
    " current_setting('tcp_user_timeout') AS user_timeout,"
    " current_setting('client_connection_check_interval') AS check"
)
DEAD_CLIENT_SETTINGS = {
    "idle": "5",
    "interval": "2",
    "count": "3",
    "user_timeout": "10000",
    "check": "2s",
}


def test_dedicated_connections_have_the_server_drop_a_dead_client(database_url: str) -> None:
    connection = DedicatedConnection(database_url, "payment-worker test-settings")
    try:
        [row] = connection.execute(SERVER_SETTINGS, {})
    finally:
        connection.close()
    assert row == DEAD_CLIENT_SETTINGS
    # The listener's session, read on its own connection (it runs nothing but LISTEN).
    notifications = NotificationConnection(database_url)
    try:
        assert notifications.ensure()
        assert notifications._conn is not None
        cur = notifications._conn.cursor(row_factory=dict_row)
        assert cur.execute(SERVER_SETTINGS).fetchone() == DEAD_CLIENT_SETTINGS
    finally:
        notifications.close()


# A worker whose host vanished mid-statement: the client side is gone, the backend keeps
# running its statement. Without client_connection_check_interval the server notices only
# when the statement ends (here after 60 s) and its session, with what it holds, stays.
HOLDER = """
import sys
from worker.store import DedicatedConnection, NotificationConnection
DedicatedConnection(sys.argv[1], "payment-worker test-vanished").execute(
    "SELECT pg_sleep(60)", {}
)
"""


def test_the_server_ends_the_session_of_a_client_that_vanished_mid_statement(
    database_url: str, conn: psycopg.Connection
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, database_url],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:

        def backend() -> int | None:
            row = conn.execute(
                "SELECT pid FROM pg_stat_activity WHERE application_name = %s"
                " AND query LIKE '%%pg_sleep%%'",
                ("payment-worker test-vanished",),
            ).fetchone()
            return None if row is None else int(row[0])

        wait_until(lambda: backend() is not None, 10, "the holder's statement running")
        pid = backend()
    finally:
        holder.kill()
        holder.wait()

    def gone() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = %s", (pid,)
        ).fetchone()
        return row == (0,)

    took = wait_until(gone, 10, "the vanished client's session ended by the server")
    print(f"\nsession of a vanished client ended after {took:.1f} s")
