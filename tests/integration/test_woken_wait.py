"""The RPCs' woken wait (schema/deploy/woken_wait.sql): a claim takes its job's wait
lock on the lease session, the outcome's commit gives it up, and payment_await sleeps
on it instead of polling the row - also when the worker dies mid-job."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.integration.rows import claim, insert_payment
from tests.integration.waiting import wait_until
from worker.models import PaymentIntent
from worker.store import Store


def wait_lock_holder(conn: psycopg.Connection, payment_id: UUID) -> int | None:
    row = conn.execute(
        "SELECT pid FROM pg_locks WHERE locktype = 'advisory' AND granted"
        " AND mode = 'ExclusiveLock'"
        " AND classid = payments.wait_class()::oid AND objid = payments.wait_key(%s)::oid",
        (payment_id,),
    ).fetchone()
    return None if row is None else int(row[0])


def waiting_on_advisory(conn: psycopg.Connection) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event = 'advisory'"
        " AND datname = current_database()"
        " AND query LIKE '%payment_await%'"
    ).fetchone()
    return row == (1,)


def lease_pid(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT pid FROM pg_stat_activity WHERE application_name = 'payment-worker leases'"
        " AND datname = current_database()"
    ).fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def awaiting(database_url: str) -> Iterator[ThreadPoolExecutor]:
    with ThreadPoolExecutor(max_workers=1) as threads:
        yield threads


def await_payment(
    threads: ThreadPoolExecutor, database_url: str, payment_id: UUID, isolation: str
) -> Future[str]:
    def call() -> str:
        with psycopg.connect(database_url) as caller:
            caller.execute(f"SET TRANSACTION ISOLATION LEVEL {isolation}")
            row = caller.execute(
                "SELECT (payments.payment_await(%s, interval '20 s')).status", (payment_id,)
            ).fetchone()
            assert row is not None
            return str(row[0])

    return threads.submit(call)


def test_the_claim_holds_the_wait_lock_until_the_outcome_commits(
    conn: psycopg.Connection, store: Store
) -> None:
    payment_id = insert_payment(conn)
    assert wait_lock_holder(conn, payment_id) is None
    job = claim(store)
    assert wait_lock_holder(conn, payment_id) == lease_pid(conn)
    assert store.job_complete_with_intent(job, PaymentIntent(payment_id, "pi_1", "pi_1_s"))[0]
    assert wait_lock_holder(conn, payment_id) is None


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_the_wait_sleeps_on_the_lock_and_wakes_at_the_commit(
    database_url: str,
    conn: psycopg.Connection,
    store: Store,
    awaiting: ThreadPoolExecutor,
    isolation: str,
) -> None:
    payment_id = insert_payment(conn)
    job = claim(store)
    answer = await_payment(awaiting, database_url, payment_id, isolation)
    wait_until(lambda: waiting_on_advisory(conn), what="the RPC sleeping on the wait lock")
    assert not answer.done()
    assert store.job_complete_with_intent(job, PaymentIntent(payment_id, "pi_1", "pi_1_s"))[0]
    assert answer.result(timeout=10) == "pending"


def test_a_worker_dying_mid_job_sends_the_wait_back_to_polling(
    database_url: str,
    conn: psycopg.Connection,
    pool: ConnectionPool,
    store: Store,
    awaiting: ThreadPoolExecutor,
) -> None:
    payment_id = insert_payment(conn)
    claim(store)
    answer = await_payment(awaiting, database_url, payment_id, "READ COMMITTED")
    wait_until(lambda: waiting_on_advisory(conn), what="the RPC sleeping on the wait lock")
    conn.execute("SELECT pg_terminate_backend(%s, 5000)", (lease_pid(conn),))
    # The lock went with the session; the payment is unanswered, so the RPC reads on.
    wait_until(lambda: wait_lock_holder(conn, payment_id) is None, what="the lock gone")
    assert not answer.done()
    # The job rescued and run by another attempt: the RPC answers.
    conn.execute(
        "UPDATE metadata.river_job SET state = 'available', scheduled_at = now()"
        " WHERE args ->> 'payment_id' = %s",
        (str(payment_id),),
    )
    other = Store(pool)
    try:
        job = claim(other)
        assert other.job_complete_with_intent(job, PaymentIntent(payment_id, "pi_2", "pi_2_s"))[0]
    finally:
        other.close()
    assert answer.result(timeout=10) == "pending"


def test_a_client_holding_the_key_only_turns_the_wait_back_into_reads(
    database_url: str,
    conn: psycopg.Connection,
    store: Store,
    awaiting: ThreadPoolExecutor,
) -> None:
    payment_id = insert_payment(conn)
    with psycopg.connect(database_url, autocommit=True) as stranger:
        stranger.execute(
            "SELECT pg_advisory_lock(payments.wait_class(), payments.wait_key(%s))", (payment_id,)
        )
        job = claim(store)
        assert job.wait_locked is False, "the claim went ahead without the lock"
        answer = await_payment(awaiting, database_url, payment_id, "READ COMMITTED")
        wait_until(lambda: waiting_on_advisory(conn), what="the RPC waiting on the held key")
        assert store.job_complete_with_intent(job, PaymentIntent(payment_id, "pi_1", "pi_1_s"))[0]
        # Still held by the stranger: the RPC answers at its next slice's read.
        assert answer.result(timeout=10) == "pending"
