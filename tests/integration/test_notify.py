"""The insert trigger's NOTIFY on metadata.river_insert, and the worker's listener.

Absence of a notification is proven without sleeping: a sentinel is notified after
the statement under test, and PostgreSQL delivers notifications in commit order, so
anything the statement sent arrives before the sentinel."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import psycopg
import pytest

from tests.integration.rows import CHANNEL, listen, received_before_sentinel
from worker.listener import InsertListener


@pytest.fixture
def listener(database_url: str) -> Iterator[psycopg.Connection]:
    """A connection listening on River's insert channel and on the sentinel channel."""
    with listen(database_url) as listening:
        yield listening


INSERT_JOB = (
    "INSERT INTO metadata.river_job (queue, kind, args, max_attempts, state)"
    " VALUES (%s, %s, '{}', 1, %s)"
)


@pytest.mark.parametrize(
    ("queue", "kind"),
    [("payments", "create_payment_intent"), ("default", "send_email"), ("q-ü 1", "x")],
)
def test_an_available_job_notifies_its_queue_at_commit(
    database_url: str, conn: psycopg.Connection, listener: psycopg.Connection, queue: str, kind: str
) -> None:
    with psycopg.connect(database_url) as inserter:
        inserter.execute(INSERT_JOB, (queue, kind, "available"))
        # Not before commit: the sentinel, committed after the insert, comes alone.
        assert received_before_sentinel(listener, conn) == []
        inserter.commit()

        assert received_before_sentinel(listener, conn) == [f'{{"queue": "{queue}"}}']


def test_a_rolled_back_insert_notifies_nothing(
    database_url: str, conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    with psycopg.connect(database_url) as inserter:
        inserter.execute(INSERT_JOB, ("payments", "k", "available"))
        inserter.rollback()

    assert received_before_sentinel(listener, conn) == []


def test_a_multi_row_insert_notifies_once_per_queue(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts) VALUES"
        " ('alpha', 'k1', '{}', 1), ('beta', 'k2', '{}', 1), ('alpha', 'k3', '{}', 1),"
        " ('beta', 'k1', '{}', 1), ('alpha', 'k2', '{}', 1)"
    )

    received = received_before_sentinel(listener, conn)

    assert sorted(received) == ['{"queue": "alpha"}', '{"queue": "beta"}']


def test_scheduled_jobs_notify_nothing(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts, state, scheduled_at)"
        " VALUES ('payments', 'k', '{}', 1, 'scheduled', now() + interval '1 hour')"
    )

    assert received_before_sentinel(listener, conn) == []


def test_only_the_available_rows_of_a_mixed_insert_notify(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts, state) VALUES"
        " ('alpha', 'k', '{}', 1, 'scheduled'), ('beta', 'k', '{}', 1, 'available')"
    )

    assert received_before_sentinel(listener, conn) == ['{"queue": "beta"}']


def test_a_payment_notifies_the_payments_queue(
    conn: psycopg.Connection, listener: psycopg.Connection
) -> None:
    conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")

    assert received_before_sentinel(listener, conn) == ['{"queue": "payments"}']


# --- InsertListener ---------------------------------------------------------------------------


def run_until_received(insert_listener: InsertListener, deadline_s: float = 5.0) -> int:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        received = insert_listener.run_once(timeout=0.05)
        if received:
            return received
    raise AssertionError(f"no notification within {deadline_s} s")


@pytest.fixture
def insert_listener(database_url: str) -> Iterator[tuple[InsertListener, threading.Event]]:
    """An InsertListener for queue `payments`, connected, its start-up wake-up consumed."""
    wake, stop = threading.Event(), threading.Event()
    listening = InsertListener(database_url, "payments", wake, stop)
    listening.run_once(timeout=0.01)
    assert listening.listening.is_set()
    assert wake.is_set(), "a fresh connection wakes a catch-up claim"
    wake.clear()
    yield listening, wake
    stop.set()
    listening.run()  # returns at once when stopped, closing its connection


def test_listener_wakes_for_its_own_queue(
    conn: psycopg.Connection, insert_listener: tuple[InsertListener, threading.Event]
) -> None:
    listening, wake = insert_listener
    conn.execute(INSERT_JOB, ("payments", "k", "available"))

    assert run_until_received(listening) == 1
    assert wake.is_set()


def test_listener_ignores_another_queue(
    conn: psycopg.Connection, insert_listener: tuple[InsertListener, threading.Event]
) -> None:
    listening, wake = insert_listener
    conn.execute(INSERT_JOB, ("other_queue", "k", "available"))

    assert run_until_received(listening) == 1
    assert not wake.is_set()

    conn.execute(INSERT_JOB, ("payments", "k", "available"))
    assert run_until_received(listening) == 1
    assert wake.is_set()


def test_listener_wakes_on_a_payload_it_cannot_read(
    conn: psycopg.Connection, insert_listener: tuple[InsertListener, threading.Event]
) -> None:
    listening, wake = insert_listener
    conn.execute("SELECT pg_notify(%s, 'not json')", (CHANNEL,))

    assert run_until_received(listening) == 1
    assert wake.is_set()


def test_a_silent_listening_connection_is_checked_and_a_dead_one_noticed(
    database_url: str, conn: psycopg.Connection
) -> None:
    wake, stop = threading.Event(), threading.Event()
    listening = InsertListener(database_url, "payments", wake, stop, ping_interval=0.05)
    thread = threading.Thread(target=listening.run, daemon=True)
    try:
        listening.run_once(timeout=0.01)
        wake.clear()
        killed = conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
            " WHERE application_name = 'payment-worker listener' AND datname = current_database()"
        ).fetchone()
        assert killed == (1,)
        # No notification will ever come: only the ping can tell the line is dead.
        with pytest.raises(psycopg.OperationalError):
            for _ in range(100):
                listening.run_once(timeout=0.02)
        # run() reconnects, re-LISTENs and wakes a catch-up claim.
        thread.start()
        assert wake.wait(5), "no catch-up wake-up after reconnecting"
        assert listening.listening.wait(5)
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(5)
        else:
            listening.run()  # returns at once when stopped, closing its connection
