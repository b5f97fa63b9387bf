"""The worker's functions attacked as the audit did: a payment_worker login that does not
hold a job, a cleaner asking for too little retention, and a role outside every group that
holds the advisory-lock keys leases and leadership used to be. Every attack is run for
real and the database is read afterwards, as the admin, to show that nothing changed."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests.integration.conftest import MakeRole, connect_as, role_url
from tests.integration.rows import (
    QUEUE,
    claim,
    insert_payment,
    job_row,
    job_row_or_none,
    leader_pid,
    lease_holder,
    payment_row,
)
from worker.maintenance import Cleaner, Leadership, Rescuer, Scheduler
from worker.models import Job, PaymentIntent
from worker.store import Store

# The advisory-lock namespace the leader and the leases used (0x70776B31).
OLD_NAMESPACE = 1886874417
ERROR = {"at": "2026-01-01T00:00:00+00:00", "attempt": 1, "error": "e", "trace": ""}

MakeWorkerStore = Callable[[], Store]


@pytest.fixture
def worker_url(database_url: str, login_role: MakeRole) -> str:
    """A LOGIN role granted payment_worker alone."""
    return role_url(database_url, login_role("payment_worker"))


@pytest.fixture
def worker_store(worker_url: str) -> Iterator[MakeWorkerStore]:
    """Stores whose every connection is the payment_worker login."""
    with ConnectionPool(
        worker_url, min_size=1, max_size=4, kwargs={"autocommit": True}, open=True
    ) as role_pool:
        stores: list[Store] = []

        def make() -> Store:
            store = Store(role_pool)
            stores.append(store)
            return store

        yield make
        for store in stores:
            store.close()


def state_of(conn: psycopg.Connection) -> tuple[object, ...]:
    return tuple(
        conn.execute(query).fetchall()
        for query in (
            "SELECT * FROM payments.transactions ORDER BY id",
            "SELECT * FROM metadata.river_job ORDER BY id",
            "SELECT * FROM payments.job_lease ORDER BY job_id",
        )
    )


def insert_job(
    conn: psycopg.Connection, queue: str, state: str, finalized_ago: str | None = None
) -> int:
    row = conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts, state, attempt,"
        " attempted_at, finalized_at) VALUES (%s, 'test_kind', '{}', 5, %s, 1, now(),"
        " now() - %s::interval) RETURNING id",
        (queue, state, finalized_ago),
    ).fetchone()
    assert row is not None
    return int(row[0])


# --- outcomes and payments of a job the caller does not hold ------------------------------------

OUTCOMES: dict[str, Callable[[Store, Job], Any]] = {
    "complete": lambda store, job: store.job_complete(job),
    "retry": lambda store, job: store.job_retry(job, ERROR, 0),
    "discard": lambda store, job: store.job_discard(job, ERROR),
    "discard-with-caller-message": lambda store, job: store.job_discard(
        job, {**ERROR, "caller_message": "failed by someone else"}
    ),
    "complete-with-intent": lambda store, job: store.job_complete_with_intent(
        job, PaymentIntent(UUID(job.args["payment_id"]), "pi_forged", "pi_forged_secret_x")
    )[0],
}

IMPOSTORS: dict[str, Callable[[Job], Job]] = {
    "another-workers-lease": lambda job: replace(job, lease_token=uuid4()),
    "no-lease": lambda job: replace(job, lease_token=None),
    "previous-attempt": lambda job: replace(job, attempt=job.attempt - 1),
    "next-attempt": lambda job: replace(job, attempt=job.attempt + 1),
    "another-job": lambda job: replace(job, id=job.id + 1000),
}


@pytest.mark.parametrize("impostor", list(IMPOSTORS))
@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_an_outcome_for_a_job_the_caller_does_not_hold_changes_nothing(
    conn: psycopg.Connection, worker_store: MakeWorkerStore, outcome: str, impostor: str
) -> None:
    payment_id = insert_payment(conn)
    holder, other = worker_store(), worker_store()
    job = claim(holder, "holder")
    before = state_of(conn)

    assert OUTCOMES[outcome](other, IMPOSTORS[impostor](job)) is False

    assert state_of(conn) == before
    assert lease_holder(conn, job.id) is not None
    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    # The holder still finishes it, with its own proof.
    assert OUTCOMES[outcome](holder, job) is True


@pytest.mark.parametrize("outcome", list(OUTCOMES))
def test_an_outcome_after_the_lease_backend_died_is_refused(
    conn: psycopg.Connection, worker_store: MakeWorkerStore, outcome: str
) -> None:
    """The claim's session ended (a lost connection): the rescuer owns the job now, so the
    old attempt's answer, with its own true token, changes nothing."""
    insert_payment(conn)
    holder = worker_store()
    job = claim(holder, "holder")
    pid = lease_holder(conn, job.id)
    assert pid is not None
    assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)
    before = state_of(conn)

    assert OUTCOMES[outcome](holder, job) is False

    assert state_of(conn) == before


def test_the_payment_of_a_job_not_held_is_not_read(
    conn: psycopg.Connection, worker_store: MakeWorkerStore
) -> None:
    payment_id = insert_payment(conn)
    holder, other = worker_store(), worker_store()
    job = claim(holder, "holder")
    for name, forge in IMPOSTORS.items():
        assert other.job_payment_get(forge(job)) is None, name
    found = holder.job_payment_get(job)
    assert found is not None and found.id == payment_id
    # Finished, it is nobody's any more.
    assert holder.job_complete_with_intent(
        job, PaymentIntent(payment_id, "pi_1", "pi_1_secret_x")
    ) == (True, pytest.approx(0, abs=60))
    assert holder.job_payment_get(job) is None


def test_no_function_a_worker_may_run_returns_a_secret(conn: psycopg.Connection) -> None:
    """The worker stores client secrets but reads none back, nor the config's DSN: no
    output column of any function it may execute could carry one."""
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text, p.prorettype::regtype::text,"
        "  ARRAY(SELECT a.name FROM unnest(p.proargnames, p.proargmodes) AS a(name, mode)"
        "        WHERE a.mode IN ('o', 't', 'b'))"
        " FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace"
        "  AND has_function_privilege('payment_worker', p.oid, 'execute')"
    ).fetchall()
    assert len(rows) >= 16
    # A clock reading or an outcome word cannot carry a secret either.
    words = {"payments.stripe_event_record(jsonb,text)"}
    for signature, returns, columns in rows:
        assert returns in ("boolean", "integer", "record", "timestamp with time zone") or (
            returns == "text" and signature in words
        ), signature
        assert not [c for c in columns if "secret" in c or "dsn" in c], (signature, columns)


def test_a_held_jobs_answered_payment_keeps_its_secret_and_status(
    conn: psycopg.Connection, worker_store: MakeWorkerStore
) -> None:
    """Holding a job is no licence over its payment once answered: no second intent, no
    failing a payment whose customer already has a working client secret."""
    answered, failing = insert_payment(conn), insert_payment(conn)
    store = worker_store()
    jobs = {UUID(job.args["payment_id"]): job for job in store.job_get_available(10, "w")}
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_real',"
        " provider_client_secret = 'pi_real_secret_x' WHERE id = ANY(%s)",
        ([answered, failing],),
    )
    before = {p: payment_row(conn, p) for p in (answered, failing)}

    assert store.job_complete_with_intent(
        jobs[answered], PaymentIntent(answered, "pi_swap", "pi_swap_secret_m")
    ) == (True, None)
    assert store.job_discard(jobs[failing], {**ERROR, "caller_message": "failed after all"})

    assert {p: payment_row(conn, p) for p in (answered, failing)} == before
    assert job_row(conn, jobs[answered].id)["state"] == "completed"
    assert job_row(conn, jobs[failing].id)["state"] == "discarded"


# --- maintenance input --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("completed", "discarded"),
    [(0, 0), (-3600, -3600), (3599, 86400), (86400, 60), (float("nan"), 86400)],
    ids=["zero", "negative", "completed-below-minimum", "discarded-below-minimum", "nan"],
)
def test_the_cleaner_refuses_a_retention_below_the_minimum(
    conn: psycopg.Connection, worker_store: MakeWorkerStore, completed: float, discarded: float
) -> None:
    for state in ("completed", "discarded", "cancelled"):
        insert_job(conn, QUEUE, state, finalized_ago="10 min")
    before = state_of(conn)

    with pytest.raises(psycopg.errors.InvalidParameterValue, match="min_job_retention"):
        worker_store().job_clean_finalized(completed, discarded, 100)

    assert state_of(conn) == before


def test_the_minimum_retention_is_the_databases(
    conn: psycopg.Connection, worker_store: MakeWorkerStore
) -> None:
    job_id = insert_job(conn, QUEUE, "completed", finalized_ago="3 hours")
    conn.execute("UPDATE payments.config SET min_job_retention = '1 day'")
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="86400 s"):
        worker_store().job_clean_finalized(3600, 3600, 100)
    assert job_row_or_none(conn, job_id) is not None


def test_the_cleaner_deletes_only_finalized_jobs_of_our_queue(
    conn: psycopg.Connection, worker_store: MakeWorkerStore
) -> None:
    doomed = [insert_job(conn, QUEUE, s, "2 hours") for s in ("completed", "cancelled")]
    kept = [insert_job(conn, QUEUE, s, None) for s in ("running", "available", "retryable")]
    kept += [insert_job(conn, "default", s, "30 days") for s in ("completed", "discarded")]
    kept.append(insert_job(conn, QUEUE, "completed", "59 min"))
    kept_before = {job_id: job_row(conn, job_id) for job_id in kept}

    assert worker_store().job_clean_finalized(3600, 3600, 100) == 2

    assert [job_row_or_none(conn, job_id) for job_id in doomed] == [None, None]
    assert {job_id: job_row(conn, job_id) for job_id in kept} == kept_before


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s: s.job_rescue_orphaned(59, 10, "e"), "stuck_after_seconds must be at least 60"),
        (lambda s: s.job_rescue_orphaned(0, 10, "e"), "stuck_after_seconds must be at least 60"),
        (lambda s: s.job_rescue_orphaned(60, 0, "e"), "max must be between"),
        (lambda s: s.job_rescue_orphaned(60, 10, ""), "error must be 1 to 1000 characters"),
        (lambda s: s.job_schedule_due(0), "max must be between"),
        (lambda s: s.job_get_available(0, "w"), "max must be between"),
        (lambda s: s.job_get_available(1, ""), "attempted_by must be"),
        (lambda s: s.leader_elect("", 10), "leader_id must be"),
        (lambda s: s.leader_elect("w", 0), "ttl_seconds must be"),
    ],
    ids=[
        "rescue-59s",
        "rescue-0s",
        "rescue-max-0",
        "rescue-no-error",
        "schedule-max-0",
        "claim-max-0",
        "claim-anonymous",
        "leader-anonymous",
        "leader-ttl-0",
    ],
)
def test_bad_maintenance_input_is_refused_and_changes_nothing(
    conn: psycopg.Connection, worker_store: MakeWorkerStore, call: Any, message: str
) -> None:
    insert_job(conn, QUEUE, "running")  # an orphan: no lease
    insert_payment(conn)
    before = state_of(conn)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        call(worker_store())
    assert state_of(conn) == before
    assert leader_pid(conn) is None


# --- a stranger ---------------------------------------------------------------------------------


def worker_functions(conn: psycopg.Connection) -> list[tuple[str, str]]:
    """(signature, a call with NULL arguments) of every function a worker or monitor may run."""
    return [
        (row[0], row[1])
        for row in conn.execute(
            "SELECT p.oid::regprocedure::text, format('SELECT * FROM %s(%s)', p.oid::regproc,"
            "  (SELECT string_agg('NULL::' || format_type(t, NULL), ', ')"
            "   FROM unnest(p.proargtypes) AS t))"
            " FROM pg_proc p WHERE p.pronamespace = 'payments'::regnamespace"
            "  AND (has_function_privilege('payment_worker', p.oid, 'execute')"
            "       OR has_function_privilege('payment_monitor', p.oid, 'execute'))"
            " ORDER BY 1"
        )
    ]


def test_public_can_execute_no_function_of_schema_payments(conn: psycopg.Connection) -> None:
    rows = conn.execute(
        "SELECT p.oid::regprocedure::text FROM pg_proc p"
        " WHERE p.pronamespace = 'payments'::regnamespace"
        "  AND has_function_privilege('public', p.oid, 'execute')"
    ).fetchall()
    assert rows == []
    assert len(worker_functions(conn)) >= 16


def test_a_role_outside_the_groups_can_call_none_of_the_workers_functions(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole
) -> None:
    insert_payment(conn)
    before = state_of(conn)
    with connect_as(database_url, login_role()) as stranger:
        for _signature, call in worker_functions(conn):
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="permission denied"):
                stranger.execute(call)
    assert state_of(conn) == before


def test_a_stranger_holding_the_old_lock_keys_stops_no_maintenance(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, worker_store: MakeWorkerStore
) -> None:
    """The audit's attack: an unrelated login holds the leader's advisory key and lease-like
    keys for every job. Workers lead, claim, schedule, rescue and clean as if it were not
    there, because none of it is an advisory lock any more."""
    available = insert_payment(conn)
    due = insert_job(conn, QUEUE, "retryable")
    conn.execute("UPDATE metadata.river_job SET scheduled_at = now() WHERE id = %s", (due,))
    orphan = insert_job(conn, QUEUE, "running")
    old = insert_job(conn, QUEUE, "completed", finalized_ago="2 hours")
    job_ids = [row[0] for row in conn.execute("SELECT id FROM metadata.river_job")]
    with connect_as(database_url, login_role()) as stranger:
        stranger.execute("SELECT pg_advisory_lock(%s, -1)", (OLD_NAMESPACE,))
        for job_id in job_ids:
            stranger.execute("SELECT pg_advisory_lock(%s, %s)", (OLD_NAMESPACE, job_id))
        held = conn.execute(
            "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid)"
            " WHERE l.locktype = 'advisory' AND l.granted AND a.usename <> current_user"
        ).fetchone()
        assert held == (len(job_ids) + 1,)

        store, stop = worker_store(), threading.Event()
        leadership = Leadership(store, stop=stop)
        assert leadership.run_once() is True
        wake = threading.Event()
        assert Scheduler(store, leadership, queue=QUEUE, wake=wake, stop=stop).run_once() == 1
        assert Rescuer(store, leadership, queue=QUEUE, stop=stop).run_once() == 1
        # Rescued as River does, retryable after its backoff: due now, and scheduled.
        conn.execute("UPDATE metadata.river_job SET scheduled_at = now() WHERE id = %s", (orphan,))
        assert Scheduler(store, leadership, queue=QUEUE, wake=wake, stop=stop).run_once() == 1
        assert Cleaner(store, leadership, queue=QUEUE, stop=stop).run_once() == 0  # 24 h
        assert (
            Cleaner(store, leadership, queue=QUEUE, stop=stop, completed_retention=3600).run_once()
            == 1
        )
        claimed = {job.id for job in store.job_get_available(10, "w")}

    assert job_row_or_none(conn, old) is None
    payment_job = conn.execute(
        "SELECT id FROM metadata.river_job WHERE args->>'payment_id' = %s", (str(available),)
    ).fetchone()
    assert payment_job is not None
    assert claimed == {payment_job[0], due, orphan}
    assert all(lease_holder(conn, job_id) is not None for job_id in claimed)
