"""Rows of the payments and River tables as the integration tests make and read them, and
the notifications the insert trigger sends about them."""

from __future__ import annotations

import time
from datetime import datetime
from typing import Any, Final
from uuid import UUID, uuid4

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from worker.models import Job
from worker.store import Store

QUEUE = "payments"
CHANNEL = "metadata.river_insert"
SENTINEL = "test.sentinel"
# insert_payment(currency=CONFIGURED): the currency payments.config names, read by the insert.
CONFIGURED: Final = None


# --- payments ---------------------------------------------------------------------------------


def insert_payment(
    conn: psycopg.Connection,
    amount: int = 2500,
    *,
    currency: str | None = "USD",
    description: str | None = None,
    user_id: str | None = None,
    owner_role: str | None = None,
) -> UUID:
    """A payment in pending_intent; its trigger enqueues its job in the payments queue."""
    row = conn.execute(
        "INSERT INTO payments.transactions (owner_role, user_id, amount, currency, description)"
        " SELECT %s, %s, %s, coalesce(%s, currency), %s FROM payments.config RETURNING id",
        (owner_role, user_id, amount, currency, description),
    ).fetchone()
    assert row is not None
    return row[0]


def payment_row(conn: psycopg.Connection, payment_id: UUID) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute("SELECT * FROM payments.transactions WHERE id = %s", (payment_id,)).fetchone()
    assert row is not None
    return row


# --- jobs -------------------------------------------------------------------------------------


def job_row_or_none(conn: psycopg.Connection, job_id: int) -> dict[str, Any] | None:
    """The job's row, or None once it is gone (deleted by the cleaner, say)."""
    cur = conn.cursor(row_factory=dict_row)
    return cur.execute("SELECT * FROM metadata.river_job WHERE id = %s", (job_id,)).fetchone()


def job_row(conn: psycopg.Connection, job_id: int) -> dict[str, Any]:
    """The job's row, which must exist."""
    row = job_row_or_none(conn, job_id)
    assert row is not None
    return row


def job_of(conn: psycopg.Connection, payment_id: UUID) -> dict[str, Any]:
    """The row of the payment's job, which must exist."""
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "SELECT * FROM metadata.river_job WHERE args->>'payment_id' = %s", (str(payment_id),)
    ).fetchone()
    assert row is not None
    return row


def job_id_of(conn: psycopg.Connection, payment_id: UUID) -> int:
    """The id of the payment's job, which must exist."""
    row = conn.execute(
        "SELECT id FROM metadata.river_job WHERE args->>'payment_id' = %s", (str(payment_id),)
    ).fetchone()
    assert row is not None
    return int(row[0])


def claim(store: Store, worker: str = "w") -> Job:
    """The job `worker` claims with the real claim (from the queue payments.config names);
    there must be one."""
    jobs = store.job_get_available(1, worker)
    assert len(jobs) == 1, "expected one job to claim"
    return jobs[0]


def make_due_and_claim(conn: psycopg.Connection, store: Store, job_id: int) -> Job:
    """The job's retry made due now and claimed, as the scheduler would after the backoff."""
    conn.execute("UPDATE metadata.river_job SET scheduled_at = now() WHERE id = %s", (job_id,))
    assert store.job_schedule_due(10) == 1
    job = claim(store, "test-worker")
    assert job.id == job_id
    return job


def set_queue(conn: psycopg.Connection, queue: str) -> None:
    """Points payments.config, and so every worker function, at another queue."""
    conn.execute("UPDATE payments.config SET queue = %s", (queue,))


def lease_holder(conn: psycopg.Connection, job_id: int) -> int | None:
    """The live backend whose lease holds the job's current attempt, as the rescuer sees it."""
    row = conn.execute(
        "SELECT l.backend_pid FROM payments.job_lease l"
        " JOIN metadata.river_job j ON j.id = l.job_id AND j.attempt = l.attempt"
        " JOIN pg_stat_activity a ON a.pid = l.backend_pid AND a.backend_start = l.backend_start"
        " WHERE l.job_id = %s",
        (job_id,),
    ).fetchone()
    return None if row is None else int(row[0])


def leader_pid(conn: psycopg.Connection) -> int | None:
    """The live backend that holds the maintenance leadership, unexpired."""
    row = conn.execute(
        "SELECT l.backend_pid FROM payments.worker_leader l"
        " JOIN pg_stat_activity a ON a.pid = l.backend_pid AND a.backend_start = l.backend_start"
        " WHERE l.expires_at > now()"
    ).fetchone()
    return None if row is None else int(row[0])


def db_now(conn: psycopg.Connection) -> datetime:
    row = conn.execute("SELECT clock_timestamp()").fetchone()
    assert row is not None
    return row[0]


# --- notifications ----------------------------------------------------------------------------


def listen(
    database_url: str, channels: tuple[str, ...] = (CHANNEL, SENTINEL)
) -> psycopg.Connection:
    """A new autocommit connection listening on `channels` (River's insert channel and the
    sentinel's unless told); the caller closes it."""
    listener = psycopg.connect(database_url, autocommit=True)
    for channel in channels:
        listener.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
    return listener


def received_before_sentinel(
    listener: psycopg.Connection, sender: psycopg.Connection, timeout: float = 5.0
) -> list[str]:
    """Payloads on CHANNEL delivered before a sentinel that `sender` notifies now.

    PostgreSQL delivers notifications in commit order, so anything committed before the
    sentinel arrives before it: absence is proven without sleeping."""
    token = uuid4().hex
    sender.execute("SELECT pg_notify(%s, %s)", (SENTINEL, token))
    payloads: list[str] = []
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        for notify in listener.notifies(timeout=left):
            if notify.channel == SENTINEL and notify.payload == token:
                return payloads
            if notify.channel == CHANNEL:
                payloads.append(notify.payload)
    raise AssertionError(f"sentinel not received within {timeout} s; got {payloads}")
