"""The SQL of worker/sql/jobs.sql, run through Store against real River tables.

Jobs are set up with plain SQL, the way any River client would leave them."""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from datetime import timedelta
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from tests.integration.rows import (
    CHANNEL,
    QUEUE,
    claim,
    db_now,
    insert_payment,
    job_row,
    lease_holder,
    listen,
    set_queue,
)
from worker.handlers import caller_reason
from worker.models import Job
from worker.queries import QUERIES
from worker.store import Store

INDEX = "river_job_prioritized_fetching_index"


def insert_job(
    conn: psycopg.Connection,
    *,
    queue: str = QUEUE,
    kind: str = "test_kind",
    state: str = "available",
    priority: int = 1,
    scheduled_at: str = "now()",
    attempt: int = 0,
    max_attempts: int = 5,
    attempted_by: list[str] | None = None,
) -> int:
    """Inserts one job; `scheduled_at` is an SQL expression, e.g. "now() - interval '1 s'"."""
    finalized = "now()" if state in ("completed", "cancelled", "discarded") else "NULL"
    query = sql.SQL(
        "INSERT INTO metadata.river_job"
        " (queue, kind, args, state, priority, scheduled_at, attempt, max_attempts,"
        "  attempted_by, finalized_at)"
        " VALUES (%s, %s, '{{}}', %s, %s, {}, %s, %s, %s, {}) RETURNING id"
    ).format(sql.SQL(scheduled_at), sql.SQL(finalized))
    row = conn.execute(
        query, (queue, kind, state, priority, attempt, max_attempts, attempted_by)
    ).fetchone()
    assert row is not None
    return int(row[0])


def payment_state(conn: psycopg.Connection, payment_id: UUID) -> tuple[str, str | None]:
    row = conn.execute(
        "SELECT status, error_message FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def error_entry(attempt: int = 1, message: str = "boom") -> dict[str, Any]:
    return {"at": "2026-01-01T00:00:00+00:00", "attempt": attempt, "error": message, "trace": "t"}


# --- job_get_available ----------------------------------------------------------------------


def test_claims_in_rivers_order_priority_then_scheduled_at_then_id(
    conn: psycopg.Connection, store: Store
) -> None:
    day = "'2020-01-0{}T00:00:00Z'::timestamptz".format
    priority_2_oldest = insert_job(conn, priority=2, scheduled_at=day(1))
    latest = insert_job(conn, priority=1, scheduled_at=day(3))
    tied_lower_id = insert_job(conn, priority=1, scheduled_at=day(2))
    tied_higher_id = insert_job(conn, priority=1, scheduled_at=day(2))
    priority_4 = insert_job(conn, priority=4, scheduled_at="'2019-01-01T00:00:00Z'")

    claimed = [claim(store).id for _ in range(5)]

    assert claimed == [tied_lower_id, tied_higher_id, latest, priority_2_oldest, priority_4]
    assert store.job_get_available(10, "w") == []


def test_claims_only_available_due_jobs_of_its_own_queue(
    conn: psycopg.Connection, store: Store
) -> None:
    past = "now() - interval '1 min'"
    wanted = insert_job(conn, scheduled_at=past)
    others = [
        insert_job(conn, state=state, scheduled_at=past)
        for state in ("running", "retryable", "scheduled", "completed", "cancelled", "discarded")
    ]
    others.append(insert_job(conn, state="pending", scheduled_at=past))
    others.append(insert_job(conn, queue="other_queue", scheduled_at=past))
    others.append(insert_job(conn, scheduled_at="now() + interval '1 hour'"))
    before = {job_id: job_row(conn, job_id) for job_id in others}

    jobs = store.job_get_available(100, "w")

    assert [job.id for job in jobs] == [wanted]
    assert {job_id: job_row(conn, job_id) for job_id in others} == before
    # The queue is the database's to say: pointed at the other one, the claim finds its job.
    set_queue(conn, "other_queue")
    assert [job.id for job in store.job_get_available(100, "w")] == [others[-2]]


def test_claim_marks_the_job_running_and_returns_it(conn: psycopg.Connection, store: Store) -> None:
    job_id = insert_job(conn, kind="some_kind", priority=3, attempt=2, attempted_by=["old"])
    conn.execute("UPDATE metadata.river_job SET args = '{\"k\": 1}' WHERE id = %s", (job_id,))
    before = db_now(conn)

    (job,) = store.job_get_available(1, "worker-7")

    after = db_now(conn)
    row = job_row(conn, job_id)
    assert row["state"] == "running"
    assert row["attempt"] == 3
    assert before <= row["attempted_at"] <= after
    assert row["attempted_by"] == ["old", "worker-7"]
    assert row["finalized_at"] is None
    assert job == Job(
        id=job_id,
        kind="some_kind",
        args={"k": 1},
        attempt=3,
        max_attempts=5,
        priority=3,
        scheduled_at=row["scheduled_at"],
        created_at=row["created_at"],
        lease_token=job.lease_token,
        error_count=0,
    )
    # Its lease names the claim's backend, this attempt and the token it returned.
    lease = conn.execute(
        "SELECT attempt, token, backend_pid FROM payments.job_lease WHERE job_id = %s", (job_id,)
    ).fetchone()
    assert lease == (3, job.lease_token, lease_holder(conn, job_id))
    assert lease_holder(conn, job_id) is not None


@pytest.mark.parametrize(
    ("previous", "expected"),
    [
        (None, ["new"]),
        ([], ["new"]),
        ([f"w{i}" for i in range(99)], [*(f"w{i}" for i in range(99)), "new"]),
        ([f"w{i}" for i in range(100)], [*(f"w{i}" for i in range(1, 100)), "new"]),
        ([f"w{i}" for i in range(150)], [*(f"w{i}" for i in range(51, 150)), "new"]),
    ],
    ids=["null", "empty", "99", "100", "150"],
)
def test_attempted_by_keeps_the_last_100_entries(
    conn: psycopg.Connection, store: Store, previous: list[str] | None, expected: list[str]
) -> None:
    job_id = insert_job(conn, attempted_by=previous)

    claim(store, worker="new")

    assert job_row(conn, job_id)["attempted_by"] == expected


def test_max_to_lock_is_honoured(conn: psycopg.Connection, store: Store) -> None:
    ids = [insert_job(conn, scheduled_at=f"now() - interval '{10 - i} s'") for i in range(5)]

    jobs = store.job_get_available(3, "w")

    assert [job.id for job in jobs] == ids[:3]
    states = conn.execute("SELECT id, state FROM metadata.river_job ORDER BY id").fetchall()
    assert states == [(i, "running") for i in ids[:3]] + [(i, "available") for i in ids[3:]]


def test_claim_skips_a_locked_job_instead_of_waiting(
    conn: psycopg.Connection, database_url: str
) -> None:
    locked = insert_job(conn, scheduled_at="now() - interval '1 min'")
    free = [insert_job(conn) for _ in range(3)]
    # A claim that waited for the lock would be cancelled after 2 s instead of hanging.
    impatient = database_url + "?options=-c%20statement_timeout%3D2000"
    with (
        ConnectionPool(database_url, min_size=1, max_size=1, open=True) as pool,
        psycopg.connect(database_url) as holder,
    ):
        store = Store(pool, impatient)  # claims run on the store's own lease connection
        try:
            holder.execute("SELECT id FROM metadata.river_job WHERE id = %s FOR UPDATE", (locked,))
            started = time.monotonic()
            jobs = store.job_get_available(10, "w")
            elapsed = time.monotonic() - started
            assert sorted(job.id for job in jobs) == free
            assert elapsed < 1.0
            assert job_row(conn, locked)["state"] == "available"
            holder.rollback()
            # Once the lock is gone the skipped job is claimable as usual.
            assert [job.id for job in store.job_get_available(10, "w")] == [locked]
        finally:
            store.close()


def test_concurrent_claimers_never_claim_the_same_job(
    conn: psycopg.Connection, pool: ConnectionPool
) -> None:
    total = 400
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts)"
        " SELECT %s, 'test_kind', jsonb_build_object('n', n), 5 FROM generate_series(1, %s) n",
        (QUEUE, total),
    )
    claimed: dict[str, list[int]] = {"a": [], "b": []}
    failures: list[BaseException] = []
    start = threading.Barrier(2, timeout=10)

    def claimer(name: str) -> None:
        store = Store(pool)
        try:
            start.wait()
            while jobs := store.job_get_available(3, name):
                claimed[name].extend(job.id for job in jobs)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)
        finally:
            store.close()

    threads = [threading.Thread(target=claimer, args=(name,)) for name in claimed]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert not any(thread.is_alive() for thread in threads), "a claimer did not finish"
    assert failures == []

    counts = Counter(claimed["a"] + claimed["b"])
    assert [job_id for job_id, n in counts.items() if n > 1] == []
    assert len(counts) == total
    assert claimed["a"] and claimed["b"], "the claimers did not run concurrently"
    rows = conn.execute(
        "SELECT state, attempt, attempted_by, count(*) FROM metadata.river_job"
        " GROUP BY 1, 2, 3 ORDER BY 3"
    ).fetchall()
    assert rows == [
        ("running", 1, ["a"], len(claimed["a"])),
        ("running", 1, ["b"], len(claimed["b"])),
    ]


# --- job_complete / job_retry / job_discard -------------------------------------------------


def test_complete_finishes_a_running_job(conn: psycopg.Connection, store: Store) -> None:
    job_id = insert_job(conn)
    job = claim(store)
    before = db_now(conn)

    assert store.job_complete(job) is True

    row = job_row(conn, job_id)
    assert row["state"] == "completed"
    assert before <= row["finalized_at"] <= db_now(conn)
    assert row["errors"] is None
    assert row["attempt"] == 1


def test_retry_records_the_error_and_schedules_the_next_attempt(
    conn: psycopg.Connection, store: Store
) -> None:
    job_id = insert_job(conn)
    job = claim(store)
    first = error_entry(1, "first failure")
    before = db_now(conn)

    assert store.job_retry(job, first, delay_seconds=30.5) is True

    after = db_now(conn)
    row = job_row(conn, job_id)
    assert row["state"] == "retryable"
    assert row["finalized_at"] is None
    assert row["attempt"] == 1
    assert row["errors"] == [first]
    assert set(row["errors"][0]) == {"at", "attempt", "error", "trace"}
    delay = timedelta(seconds=30.5)
    assert before + delay <= row["scheduled_at"] <= after + delay

    # A second failure appends: errors keep every attempt in order.
    conn.execute(
        "UPDATE metadata.river_job SET state = 'available', scheduled_at = now() WHERE id = %s",
        (job_id,),
    )
    job = claim(store)
    second = error_entry(2, "second failure")
    assert store.job_retry(job, second, delay_seconds=0.25) is True
    row = job_row(conn, job_id)
    assert row["errors"] == [first, second]
    assert row["attempt"] == 2


def test_discard_finalizes_the_job_and_fails_its_payment(
    conn: psycopg.Connection, store: Store
) -> None:
    payment_id = insert_payment(conn)
    job = claim(store)
    assert job.args == {"payment_id": str(payment_id)}
    entry = {**error_entry(1, "declined"), "caller_message": "Your card was declined."}
    before = db_now(conn)

    assert store.job_discard(job, entry) is True

    row = job_row(conn, job.id)
    assert row["state"] == "discarded"
    assert before <= row["finalized_at"] <= db_now(conn)
    assert row["errors"] == [entry]
    # The kind's given-up effect, from the trigger: the last error's caller message.
    assert payment_state(conn, payment_id) == ("failed", "Your card was declined.")


def test_discard_without_a_caller_message_gives_the_caller_reason(
    conn: psycopg.Connection, store: Store
) -> None:
    payment_id = insert_payment(conn)
    job = claim(store)

    assert store.job_discard(job, error_entry(1, "Invalid API Key provided")) is True

    assert payment_state(conn, payment_id) == ("failed", caller_reason(payment_id))


def test_discard_and_payment_failure_are_one_transaction(
    conn: psycopg.Connection, store: Store
) -> None:
    payment_id = insert_payment(conn)
    job = claim(store)
    # The payment's UPDATE fails after the job's has run: the job's change, and the lease's
    # release, must be rolled back with it.
    conn.execute(
        "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'payment update refused'; END$$"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON payments.transactions"
        " FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()"
    )
    declined = {**error_entry(), "caller_message": "declined"}
    with pytest.raises(psycopg.errors.RaiseException, match="payment update refused"):
        store.job_discard(job, declined)
    conn.execute("DROP TRIGGER refuse ON payments.transactions")

    row = job_row(conn, job.id)
    assert (row["state"], row["finalized_at"], row["errors"]) == ("running", None, None)
    assert payment_state(conn, payment_id) == ("pending_intent", None)
    assert lease_holder(conn, job.id) is not None
    # Still the worker's to finish.
    assert store.job_discard(job, declined) is True
    assert payment_state(conn, payment_id) == ("failed", "declined")


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, j: s.job_retry(j, error_entry(), float("nan")), "delay_seconds must be"),
        (lambda s, j: s.job_retry(j, error_entry(), float("inf")), "delay_seconds must be"),
        (lambda s, j: s.job_retry(j, error_entry(), -1), "delay_seconds must be"),
        (lambda s, j: s.job_retry(j, ["not", "an", "object"], 1), "error must be a JSON object"),
        (lambda s, j: s.job_discard(j, "boom"), "error must be a JSON object"),
    ],
    ids=["nan", "infinite", "negative", "array", "string"],
)
def test_bad_outcome_input_is_refused_and_changes_nothing(
    conn: psycopg.Connection, store: Store, call: Any, message: str
) -> None:
    payment_id = insert_payment(conn)
    job = claim(store)
    before = job_row(conn, job.id)

    with pytest.raises(psycopg.errors.InvalidParameterValue, match=message):
        call(store, job)

    assert job_row(conn, job.id) == before
    assert payment_state(conn, payment_id) == ("pending_intent", None)
    assert lease_holder(conn, job.id) is not None


def test_an_outcome_gives_the_lease_up_with_it(conn: psycopg.Connection, store: Store) -> None:
    insert_job(conn)
    job = claim(store)
    assert lease_holder(conn, job.id) is not None

    assert store.job_complete(job) is True

    assert conn.execute(
        "SELECT count(*) FROM payments.job_lease WHERE job_id = %s", (job.id,)
    ).fetchone() == (0,)
    # Given once: the same answer again finds nothing to finish.
    assert store.job_complete(job) is False


FINISHED_OR_WAITING = ["available", "retryable", "scheduled", "completed", "discarded", "cancelled"]


@pytest.mark.parametrize("outcome", ["complete", "retry", "discard"])
def test_outcomes_change_only_a_running_job(
    conn: psycopg.Connection, store: Store, outcome: str
) -> None:
    payments = [insert_payment(conn) for _ in FINISHED_OR_WAITING]
    jobs = {UUID(job.args["payment_id"]): job for job in store.job_get_available(10, "w")}
    assert set(jobs) == set(payments)
    for state, payment_id in zip(FINISHED_OR_WAITING, payments, strict=True):
        finalized = "now()" if state in ("completed", "discarded", "cancelled") else "NULL"
        conn.execute(
            sql.SQL(
                "UPDATE metadata.river_job SET state = %s, finalized_at = {} WHERE id = %s"
            ).format(sql.SQL(finalized)),
            (state, jobs[payment_id].id),
        )
    before = {payment_id: job_row(conn, job.id) for payment_id, job in jobs.items()}
    # Discarded and cancelled ones failed their payments already (the trigger).
    paid_before = {payment_id: payment_state(conn, payment_id) for payment_id in payments}

    for state, payment_id in zip(FINISHED_OR_WAITING, payments, strict=True):
        job = jobs[payment_id]
        if outcome == "complete":
            result = store.job_complete(job)
        elif outcome == "retry":
            result = store.job_retry(job, error_entry(), delay_seconds=1)
        else:
            entry = {**error_entry(), "caller_message": "must not be stored"}
            result = store.job_discard(job, entry)
        assert result is False, state

    for state, payment_id in zip(FINISHED_OR_WAITING, payments, strict=True):
        assert job_row(conn, jobs[payment_id].id) == before[payment_id], state
        assert payment_state(conn, payment_id) == paid_before[payment_id], state


# --- River's pause of our queue --------------------------------------------------------------


def pause(conn: psycopg.Connection, name: str) -> None:
    """River's QueuePause: a named queue, or '*' for every queue with a row."""
    conn.execute(
        "UPDATE metadata.river_queue SET paused_at = now(), updated_at = now()"
        " WHERE (%s = '*' OR name = %s) AND paused_at IS NULL",
        (name, name),
    )


def resume(conn: psycopg.Connection, name: str) -> None:
    conn.execute(
        "UPDATE metadata.river_queue SET paused_at = NULL, updated_at = now()"
        " WHERE %s = '*' OR name = %s",
        (name, name),
    )


@pytest.mark.parametrize("name", [QUEUE, "*"])
def test_a_paused_queue_is_not_claimed_from_until_resumed(
    conn: psycopg.Connection, store: Store, name: str
) -> None:
    job_id = insert_job(conn)
    pause(conn, name)

    assert store.job_get_available(10, "w") == []
    assert job_row(conn, job_id)["state"] == "available"

    resume(conn, name)
    (job,) = store.job_get_available(10, "w")
    assert job.id == job_id


def test_a_pause_of_another_queue_or_no_queue_row_does_not_stop_our_claims(
    conn: psycopg.Connection, store: Store
) -> None:
    conn.execute("INSERT INTO metadata.river_queue (name, updated_at) VALUES ('default', now())")
    pause(conn, "default")
    first = insert_job(conn)
    assert [job.id for job in store.job_get_available(10, "w")] == [first]

    # River's queue cleaner may delete our row (not updated for 24 h): no row, no pause.
    conn.execute("DELETE FROM metadata.river_queue WHERE name = %s", (QUEUE,))
    second = insert_job(conn)
    assert [job.id for job in store.job_get_available(10, "w")] == [second]


def test_the_claim_returns_the_jobs_error_count(conn: psycopg.Connection, store: Store) -> None:
    job_id = insert_job(conn, attempt=2)
    conn.execute(
        "UPDATE metadata.river_job SET errors = ARRAY[%s::jsonb, %s::jsonb] WHERE id = %s",
        (json.dumps(error_entry(1)), json.dumps(error_entry(2)), job_id),
    )
    (job,) = store.job_get_available(10, "w")
    assert (job.attempt, job.error_count) == (3, 2)


# --- job_schedule_due -------------------------------------------------------------------------


def notifications(listener: psycopg.Connection, timeout: float = 0.3) -> list[tuple[str, str]]:
    return [(n.channel, n.payload) for n in listener.notifies(timeout=timeout)]


def test_schedule_due_makes_due_jobs_available_and_notifies_once(
    conn: psycopg.Connection, store: Store, database_url: str
) -> None:
    past, future = "now() - interval '1 s'", "now() + interval '1 hour'"
    due = [
        insert_job(conn, state="retryable", scheduled_at=past, attempt=1),
        insert_job(conn, state="scheduled", scheduled_at=past),
        insert_job(conn, state="retryable", scheduled_at=past, attempt=2, priority=4),
    ]
    untouched = [
        insert_job(conn, state="retryable", scheduled_at=future, attempt=1),
        insert_job(conn, state="scheduled", scheduled_at=future),
        insert_job(conn, state="retryable", scheduled_at=past, queue="other_queue"),
        insert_job(conn, state="running", scheduled_at=past),
        insert_job(conn, state="completed", scheduled_at=past),
    ]
    before = {job_id: job_row(conn, job_id) for job_id in untouched}
    with listen(database_url, (CHANNEL,)) as listener:
        assert store.job_schedule_due(100) == 3

        received = notifications(listener)

    assert received == [(CHANNEL, '{"queue": "payments"}')]
    assert json.loads(received[0][1]) == {"queue": QUEUE}
    for job_id in due:
        row = job_row(conn, job_id)
        assert (row["state"], row["finalized_at"]) == ("available", None)
    assert {job_id: job_row(conn, job_id) for job_id in untouched} == before
    # Now claimable, attempts carried over.
    jobs = store.job_get_available(10, "w")
    assert sorted((job.id, job.attempt) for job in jobs) == [
        (due[0], 2),
        (due[1], 1),
        (due[2], 3),
    ]


def test_schedule_due_with_nothing_due_does_not_notify(
    conn: psycopg.Connection, store: Store, database_url: str
) -> None:
    insert_job(conn, state="retryable", scheduled_at="now() + interval '1 hour'")
    with listen(database_url, (CHANNEL,)) as listener:
        assert store.job_schedule_due(100) == 0
        assert notifications(listener) == []


def test_schedule_due_honours_its_batch_size(conn: psycopg.Connection, store: Store) -> None:
    ids = [
        insert_job(conn, state="scheduled", scheduled_at=f"now() - interval '{10 - i} s'")
        for i in range(5)
    ]

    assert store.job_schedule_due(2) == 2

    states = conn.execute("SELECT id, state FROM metadata.river_job ORDER BY id").fetchall()
    assert states == [(i, "available") for i in ids[:2]] + [(i, "scheduled") for i in ids[2:]]


# --- the claim's plan --------------------------------------------------------------------------


def claim_plan(conn: psycopg.Connection) -> dict[str, Any]:
    """The plan of the claim query inside payments.job_claim, as the real function runs it:
    auto_explain reports every nested statement's plan as a NOTICE; the claim is rolled back."""
    notices: list[str] = []
    conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
    conn.execute("LOAD 'auto_explain'")
    with conn.transaction(force_rollback=True):
        for setting in (
            "auto_explain.log_min_duration = 0",
            "auto_explain.log_nested_statements = on",
            "auto_explain.log_format = json",
            "auto_explain.log_level = notice",
        ):
            conn.execute(f"SET LOCAL {setting}")
        conn.execute(QUERIES["job_get_available"], {"max_to_lock": 10, "attempted_by": "w"})
    plans = [
        json.loads(notice[notice.index("{") :])
        for notice in notices
        if "plan:" in notice and "SKIP LOCKED" in notice
    ]
    assert len(plans) == 1, notices
    plan: dict[str, Any] = plans[0]["Plan"]
    return plan


def indexes_used(node: dict[str, Any]) -> set[str]:
    """Every index any node of the plan scans."""
    found = {node["Index Name"]} if "Index Name" in node else set()
    for child in node.get("Plans", []):
        found |= indexes_used(child)
    return found


def fill_with_finished_jobs(conn: psycopg.Connection, finished: int = 20_000) -> list[int]:
    conn.execute(
        "INSERT INTO metadata.river_job"
        " (queue, kind, args, max_attempts, state, attempt, finalized_at, scheduled_at)"
        " SELECT CASE WHEN n %% 10 = 0 THEN 'other_queue' ELSE %s END, 'test_kind',"
        "  jsonb_build_object('n', n), 5, 'completed', 1, now(),"
        "  now() - make_interval(secs => n)"
        " FROM generate_series(1, %s) n",
        (QUEUE, finished),
    )
    return [insert_job(conn) for _ in range(5)]


def test_claim_uses_the_prioritized_fetching_index_after_analyze(
    conn: psycopg.Connection, store: Store
) -> None:
    available = fill_with_finished_jobs(conn)
    conn.execute("ANALYZE metadata.river_job")

    plan = claim_plan(conn)

    assert INDEX in indexes_used(plan), json.dumps(plan, default=str, indent=1)
    assert sorted(job.id for job in store.job_get_available(10, "w")) == available


def test_claim_uses_the_prioritized_fetching_index_never_analysed(
    conn: psycopg.Connection, store: Store
) -> None:
    conn.execute("ALTER TABLE metadata.river_job SET (autovacuum_enabled = false)")
    available = fill_with_finished_jobs(conn)
    never = conn.execute(
        "SELECT c.reltuples, s.last_analyze, s.last_autoanalyze, s.last_autovacuum"
        " FROM pg_class c JOIN pg_stat_user_tables s ON s.relid = c.oid"
        " WHERE c.oid = 'metadata.river_job'::regclass"
    ).fetchone()
    assert never == (-1, None, None, None), "precondition: river_job was never analysed"
    stats = conn.execute(
        "SELECT count(*) FROM pg_stats WHERE schemaname = 'metadata' AND tablename = 'river_job'"
    ).fetchone()
    assert stats == (0,)

    plan = claim_plan(conn)

    assert INDEX in indexes_used(plan), json.dumps(plan, default=str, indent=1)
    assert sorted(job.id for job in store.job_get_available(10, "w")) == available
