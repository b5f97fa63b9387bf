"""The leader's maintenance against real PostgreSQL: Leadership, the loops it gates, and the
Scheduler, Rescuer and Cleaner, one `run_once()` at a time.

Deaths are real: a Store closed, a backend terminated, a worker process killed. A lease or
the leadership is found the way the functions find it: a row naming a backend alive in
pg_stat_activity."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from stripe_standin.process import StandinProcess
from tests import pg
from tests.integration.conftest import API_KEY
from tests.integration.rows import (
    QUEUE,
    claim,
    db_now,
    insert_payment,
    job_id_of,
    job_row,
    job_row_or_none,
    leader_pid,
    lease_holder,
    listen,
    payment_row,
    received_before_sentinel,
    set_queue,
)
from tests.integration.waiting import wait_until
from worker.backoff import MAX_DELAY_SECONDS
from worker.handlers import caller_reason
from worker.maintenance import (
    RESCUE_ERROR,
    Cleaner,
    LeaderLoop,
    Leadership,
    QueueKeeper,
    Rescuer,
    Scheduler,
)
from worker.store import Store

OTHER_QUEUE = "other_queue"
ERROR_KEYS = {"at", "attempt", "error", "trace"}
LOOP_THREAD = "loop-under-test"

MakeStore = Callable[[], Store]


# --- fixtures and helpers -------------------------------------------------------------------


@pytest.fixture
def make_store(pool: ConnectionPool) -> Iterator[MakeStore]:
    """Stores on this test's pool, each with its own lease and leader connections; all closed
    at the end (closing twice is harmless)."""
    stores: list[Store] = []

    def make() -> Store:
        store = Store(pool)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def stop() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()


def insert_job(
    conn: psycopg.Connection,
    *,
    queue: str = QUEUE,
    state: str = "available",
    kind: str = "test_kind",
    args: dict[str, Any] | None = None,
    attempt: int = 0,
    max_attempts: int = 5,
    finalized_ago: str | None = None,
    attempted_ago: str | None = None,
) -> int:
    """One job as any River client could leave it; `*_ago` are SQL intervals, e.g. '2 hours'."""
    finalized = None
    if state in ("completed", "cancelled", "discarded"):
        finalized = finalized_ago or "0 s"
    row = conn.execute(
        "INSERT INTO metadata.river_job"
        " (queue, kind, args, state, attempt, max_attempts, finalized_at, attempted_at,"
        "  scheduled_at, created_at)"
        " VALUES (%s, %s, %s, %s, %s, %s, now() - %s::interval, now() - %s::interval,"
        "  now() - interval '3 days', now() - interval '3 days')"
        " RETURNING id",
        (
            queue,
            kind,
            json.dumps(args or {}),
            state,
            attempt,
            max_attempts,
            finalized,
            attempted_ago if attempted_ago is not None else ("0 s" if attempt else None),
        ),
    ).fetchone()
    assert row is not None
    return int(row[0])


def job_state(conn: psycopg.Connection, job_id: int) -> str | None:
    row = job_row_or_none(conn, job_id)
    return None if row is None else str(row["state"])


def the_leader(conn: psycopg.Connection) -> int:
    pid = leader_pid(conn)
    assert pid is not None, "nobody leads"
    return pid


def application_name(conn: psycopg.Connection, pid: int) -> str | None:
    row = conn.execute(
        "SELECT application_name FROM pg_stat_activity WHERE pid = %s", (pid,)
    ).fetchone()
    return None if row is None else str(row[0])


def backend_alive(conn: psycopg.Connection, pid: int) -> bool:
    return application_name(conn, pid) is not None


def terminate(conn: psycopg.Connection, pid: int) -> None:
    """Ends the backend and waits (up to 5 s) until it is gone."""
    assert conn.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone() == (True,)


def try_lead(leadership: Leadership) -> bool:
    """run_once as Leadership.run calls it: a lost connection surfaces as an error, after which
    the leadership is reported not held."""
    try:
        return leadership.run_once()
    except psycopg.OperationalError:
        return leadership.held


def make_rescuer(
    store: Store, stop: threading.Event, stuck_after: float = 3600.0, queue: str = QUEUE
) -> Rescuer:
    return Rescuer(
        store, Leadership(store, stop=stop), queue=queue, stop=stop, stuck_after=stuck_after
    )


def assert_retry_after(row: dict[str, Any], base: float, before: datetime, after: datetime) -> None:
    """Retryable after River's backoff base (±10 %), counted from the rescue."""
    assert row["state"] == "retryable"
    low, high = before + timedelta(seconds=0.9 * base), after + timedelta(seconds=1.1 * base)
    assert low <= row["scheduled_at"] <= high


# --- Leadership -----------------------------------------------------------------------------


def test_exactly_one_of_two_workers_leads(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    store_a, store_b = make_store(), make_store()
    a, b = Leadership(store_a, stop=stop), Leadership(store_b, stop=stop)

    assert (a.run_once(), b.run_once()) == (True, False)
    # Asking again changes nothing, in either order.
    assert (b.run_once(), a.run_once(), b.run_once()) == (False, True, False)
    assert (a.held, b.held) == (True, False)

    pid = leader_pid(conn)
    assert pid is not None
    assert application_name(conn, pid) == "payment-worker leader"


def test_when_the_leaders_store_closes_the_other_takes_over(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    store_a, store_b = make_store(), make_store()
    a, b = Leadership(store_a, stop=stop), Leadership(store_b, stop=stop)
    assert a.run_once() is True
    assert b.run_once() is False
    old_leader = leader_pid(conn)
    assert old_leader is not None

    store_a.close()
    # It resigned before hanging up: the leadership is vacant at once.
    assert conn.execute("SELECT count(*) FROM payments.worker_leader").fetchone() == (0,)
    # The server ends the session shortly after the client hangs up.
    wait_until(lambda: not backend_alive(conn, old_leader), what="closed leader backend gone")

    assert b.run_once() is True
    new_leader = the_leader(conn)
    assert new_leader != old_leader
    assert application_name(conn, new_leader) == "payment-worker leader"


def test_a_leader_whose_connection_was_killed_stops_leading_then_leads_again(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    store_a, store_b = make_store(), make_store()
    a, b = Leadership(store_a, stop=stop), Leadership(store_b, stop=stop)
    assert a.run_once() is True
    assert b.run_once() is False
    killed = leader_pid(conn)
    assert killed is not None

    terminate(conn, killed)

    assert leader_pid(conn) is None
    assert try_lead(a) is False
    assert a.held is False
    # On its next attempt, on a new connection, it leads again; the other still does not.
    assert a.run_once() is True
    assert b.run_once() is False
    assert leader_pid(conn) not in (None, killed)

    # Killed again, and this time the other worker asks first: it takes over.
    terminate(conn, the_leader(conn))
    assert b.run_once() is True
    assert try_lead(a) is False
    assert a.run_once() is False
    assert (a.held, b.held) == (False, True)


def test_a_live_leader_cannot_be_displaced_even_under_its_own_id(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    """Leadership belongs to a session, not a name: another worker claiming the leader's id,
    or asking over and over, still does not lead while the leader's session lives."""
    a = Leadership(make_store(), stop=stop, leader_id="worker-a")
    thief_store = make_store()
    assert a.run_once() is True
    held_by = the_leader(conn)
    for leader_id in ("worker-a", "worker-b", "worker-a"):
        assert thief_store.leader_elect(leader_id) is False
        assert a.run_once() is True
    assert the_leader(conn) == held_by
    row = conn.execute("SELECT leader_id FROM payments.worker_leader").fetchone()
    assert row == ("worker-a",)


def test_an_expired_leadership_is_taken_and_its_old_holder_learns_it(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    """A leader that stopped renewing (alive, but cut off) is replaced once its election
    expires; when it comes back its renewal fails and it stops leading."""
    a, b = Leadership(make_store(), stop=stop), Leadership(make_store(), stop=stop)
    assert a.run_once() is True
    assert b.run_once() is False
    conn.execute("UPDATE payments.worker_leader SET expires_at = now() - interval '1 s'")

    assert b.run_once() is True
    assert a.run_once() is False
    assert (a.held, b.held) == (False, True)


def test_a_leader_that_cannot_renew_stops_leading_when_its_ttl_runs_out(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    a = Leadership(make_store(), stop=stop, interval=0.5, ttl=1.0)
    asked = time.monotonic()
    assert a.run_once() is True
    assert a.held
    # No renewal: held until the ttl, counted from before the last request, is over.
    wait_until(lambda: not a.held, timeout=3, what="the leadership to lapse")
    assert time.monotonic() - asked >= 1.0


# --- LeaderLoop: only while leading ---------------------------------------------------------


class WatchedLeadership(Leadership):
    """Counts how often the loop under test asks whether it leads: proof that it ran."""

    def __init__(self, store: Store, *, stop: threading.Event) -> None:
        super().__init__(store, stop=stop)
        self.loop_checks = 0

    @property
    def held(self) -> bool:
        if threading.current_thread().name == LOOP_THREAD:
            self.loop_checks += 1
        return super().held


LoopCase = tuple[
    Callable[[Store, Leadership, threading.Event], LeaderLoop],
    Callable[[psycopg.Connection], int],
    Callable[[psycopg.Connection, int], bool],
]

LOOPS: dict[str, LoopCase] = {
    "scheduler": (
        lambda store, leadership, stop: Scheduler(
            store, leadership, queue=QUEUE, wake=threading.Event(), stop=stop, interval=0.01
        ),
        lambda conn: insert_job(conn, state="retryable", attempt=1),
        lambda conn, job_id: job_state(conn, job_id) == "available",
    ),
    "rescuer": (
        lambda store, leadership, stop: Rescuer(
            store, leadership, queue=QUEUE, stop=stop, interval=0.01
        ),
        # Running, and nobody holds its lease: an orphan.
        lambda conn: insert_job(conn, state="running", attempt=1),
        lambda conn, job_id: job_state(conn, job_id) == "retryable",
    ),
    "cleaner": (
        lambda store, leadership, stop: Cleaner(
            store, leadership, queue=QUEUE, stop=stop, completed_retention=3600, interval=0.01
        ),
        lambda conn: insert_job(conn, state="completed", finalized_ago="2 hours"),
        lambda conn, job_id: job_row_or_none(conn, job_id) is None,
    ),
}


@pytest.mark.parametrize("name", list(LOOPS))
def test_a_maintenance_loop_works_only_while_its_leadership_is_held(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event, name: str
) -> None:
    make_loop, make_work, work_done = LOOPS[name]
    store_a, store_b = make_store(), make_store()
    other = Leadership(store_a, stop=stop)
    ours = WatchedLeadership(store_b, stop=stop)
    assert other.run_once() is True
    assert ours.run_once() is False
    first = make_work(conn)
    before = job_row_or_none(conn, first)
    thread = threading.Thread(target=make_loop(store_b, ours, stop).run, name=LOOP_THREAD)
    thread.start()
    try:
        # Follower: twenty turns of the loop, and the work is still there, untouched.
        wait_until(lambda: ours.loop_checks >= 20, what="20 turns of the loop")
        assert job_row_or_none(conn, first) == before

        # The leader goes; ours takes over and the same loop now does the work.
        store_a.close()
        wait_until(lambda: try_lead(ours), what="leadership taken over")
        wait_until(lambda: work_done(conn, first), what=f"{name} did its work as leader")

        # Leadership lost (its connection killed): the loop stops working at once.
        terminate(conn, the_leader(conn))
        assert try_lead(ours) is False
        second = make_work(conn)
        before = job_row_or_none(conn, second)
        checks = ours.loop_checks
        wait_until(lambda: ours.loop_checks >= checks + 20, what="20 more turns of the loop")
        assert job_row_or_none(conn, second) == before
    finally:
        stop.set()
        thread.join(timeout=5)
    assert not thread.is_alive()


# --- Scheduler ------------------------------------------------------------------------------


def test_the_scheduler_loop_of_the_leader_makes_a_due_retryable_job_available(
    conn: psycopg.Connection, database_url: str, make_store: MakeStore, stop: threading.Event
) -> None:
    store = make_store()
    leadership = Leadership(store, stop=stop)
    assert leadership.run_once() is True
    due = insert_job(conn, state="retryable", attempt=1)
    later = conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, state, attempt, max_attempts,"
        " scheduled_at) VALUES (%s, 'test_kind', '{}', 'retryable', 1, 5,"
        " now() + interval '1 hour') RETURNING id",
        (QUEUE,),
    ).fetchone()
    assert later is not None
    wake = threading.Event()
    scheduler = Scheduler(store, leadership, queue=QUEUE, wake=wake, stop=stop, interval=0.01)
    thread = threading.Thread(target=scheduler.run, name=LOOP_THREAD)
    with listen(database_url) as listener:
        thread.start()
        try:
            wait_until(lambda: job_state(conn, due) == "available", what="due job available")
            assert wake.wait(5), "the scheduler did not wake its own producer"
            assert received_before_sentinel(listener, conn) == [json.dumps({"queue": QUEUE})]
        finally:
            stop.set()
            thread.join(timeout=5)
    assert not thread.is_alive()
    assert job_state(conn, later[0]) == "retryable"
    (job,) = store.job_get_available(10, "w")
    assert (job.id, job.attempt) == (due, 2)


# --- Rescuer --------------------------------------------------------------------------------


def kill_lease_by_closing(conn: psycopg.Connection, store: Store, pid: int) -> None:
    store.close()
    wait_until(lambda: not backend_alive(conn, pid), what="closed lease backend gone")


def kill_lease_by_terminating(conn: psycopg.Connection, store: Store, pid: int) -> None:
    assert application_name(conn, pid) == "payment-worker leases"
    terminate(conn, pid)


@pytest.mark.parametrize(
    "kill_lease",
    [kill_lease_by_closing, kill_lease_by_terminating],
    ids=["store-closed", "backend-terminated"],
)
def test_a_job_whose_lease_connection_died_is_retryable_after_rivers_first_backoff(
    conn: psycopg.Connection,
    database_url: str,
    make_store: MakeStore,
    stop: threading.Event,
    kill_lease: Callable[[psycopg.Connection, Store, int], None],
) -> None:
    payment_id = insert_payment(conn)
    dead = make_store()
    job = claim(dead, "doomed-worker")
    assert job.lease_token is not None
    pid = lease_holder(conn, job.id)
    assert pid is not None
    rescuer = make_rescuer(make_store(), stop)
    # Alive, it is left alone.
    assert rescuer.run_once() == 0

    kill_lease(conn, dead, pid)
    assert lease_holder(conn, job.id) is None
    with listen(database_url) as listener:
        before = db_now(conn)
        assert rescuer.run_once() == 1
        after = db_now(conn)
        received = received_before_sentinel(listener, conn)

    # Not available yet, so nobody is woken: the scheduler notifies once it is due.
    assert received == []
    row = job_row(conn, job.id)
    assert (row["attempt"], row["finalized_at"]) == (1, None)
    assert_retry_after(row, 1, before, after)
    (entry,) = row["errors"]
    assert set(entry) == ERROR_KEYS
    assert entry["attempt"] == 1
    assert entry["error"] == RESCUE_ERROR
    assert "rescued" in entry["error"]
    assert entry["trace"] == ""
    assert before - timedelta(seconds=1) <= datetime.fromisoformat(entry["at"]) <= after
    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    # Once is enough; then, due, the job is a worker's again, on its second attempt.
    assert rescuer.run_once() == 0
    conn.execute("UPDATE metadata.river_job SET scheduled_at = now() WHERE id = %s", (job.id,))
    assert make_store().job_schedule_due(10) == 1
    taker = make_store()
    again = claim(taker, "live-worker")
    assert again.lease_token is not None
    assert (again.id, again.attempt) == (job.id, 2)
    assert rescuer.run_once() == 0


def test_a_job_leased_by_a_live_worker_is_left_alone(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    insert_payment(conn)
    insert_payment(conn)
    live = make_store()
    jobs = live.job_get_available(10, "live-worker")
    assert len(jobs) == 2
    assert all(job.lease_token is not None for job in jobs)
    before = {job.id: job_row_or_none(conn, job.id) for job in jobs}
    rescuer = make_rescuer(make_store(), stop)

    assert rescuer.run_once() == 0

    assert {job.id: job_row_or_none(conn, job.id) for job in jobs} == before
    # Its worker still gives its answer, as usual.
    assert all(live.job_complete(job) for job in jobs)


def test_a_leased_job_running_longer_than_stuck_after_is_rescued_anyway(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    insert_payment(conn)
    insert_payment(conn)
    stuck_worker = make_store()
    stuck, slow = stuck_worker.job_get_available(2, "stuck-worker")
    conn.execute(
        "UPDATE metadata.river_job SET attempted_at = now() - interval '61 s' WHERE id = %s",
        (stuck.id,),
    )
    conn.execute(
        "UPDATE metadata.river_job SET attempted_at = now() - interval '50 s' WHERE id = %s",
        (slow.id,),
    )
    slow_before = job_row_or_none(conn, slow.id)
    rescuer = make_rescuer(make_store(), stop, stuck_after=60)

    before = db_now(conn)
    assert rescuer.run_once() == 1
    after = db_now(conn)

    # One live session held both: only the time bound told them apart. The stuck job's
    # lease went with its rescue; the slow one's is still held.
    worker_pid = lease_holder(conn, slow.id)
    assert worker_pid is not None and backend_alive(conn, worker_pid)
    assert lease_holder(conn, stuck.id) is None
    row = job_row(conn, stuck.id)
    assert row["attempt"] == 1
    assert_retry_after(row, 1, before, after)
    assert [entry["error"] for entry in row["errors"]] == [RESCUE_ERROR]
    assert job_row_or_none(conn, slow.id) == slow_before
    # The stuck worker's late answer no longer counts: the job is not running any more.
    assert stuck_worker.job_complete(stuck) is False
    assert job_state(conn, stuck.id) == "retryable"


def test_an_orphan_at_max_attempts_is_discarded_and_fails_its_pending_payment(
    conn: psycopg.Connection, database_url: str, make_store: MakeStore, stop: threading.Event
) -> None:
    conn.execute("UPDATE payments.config SET max_attempts = 3")
    waiting = insert_payment(conn)
    cancelled = insert_payment(conn)
    answered = insert_payment(conn)
    young = insert_payment(conn)
    # Three attempts already behind the first three (the claim below makes it their third).
    conn.execute(
        "UPDATE metadata.river_job SET attempt = 2 WHERE args->>'payment_id' = ANY(%s)",
        ([str(p) for p in (waiting, cancelled, answered)],),
    )
    dead = make_store()
    jobs = {UUID(job.args["payment_id"]): job for job in dead.job_get_available(10, "w")}
    assert {p: job.attempt for p, job in jobs.items()} == {
        waiting: 3,
        cancelled: 3,
        answered: 3,
        young: 1,
    }
    # Meanwhile two payments were settled some other way.
    conn.execute("UPDATE payments.transactions SET status = 'canceled' WHERE id = %s", (cancelled,))
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_other',"
        " provider_client_secret = 'pi_other_secret_x' WHERE id = %s",
        (answered,),
    )
    untouched = {p: payment_row(conn, p) for p in (cancelled, answered, young)}
    pid = lease_holder(conn, jobs[waiting].id)
    assert pid is not None
    kill_lease_by_terminating(conn, dead, pid)
    rescuer = make_rescuer(make_store(), stop)

    before = db_now(conn)
    assert rescuer.run_once() == 4
    after = db_now(conn)

    for p in (waiting, cancelled, answered):
        row = job_row(conn, jobs[p].id)
        assert (row["state"], row["attempt"]) == ("discarded", 3)
        assert before <= row["finalized_at"] <= after
        assert [entry["error"] for entry in row["errors"]] == [RESCUE_ERROR]
    young_row = job_row(conn, jobs[young].id)
    assert young_row["finalized_at"] is None
    assert_retry_after(young_row, 1, before, after)
    failed = payment_row(conn, waiting)
    assert failed["status"] == "failed"
    # The kind's given-up effect (the trigger), as for any discard: the caller's words;
    # the detail stays on the job.
    assert failed["error_message"] == caller_reason(waiting)
    assert {p: payment_row(conn, p) for p in untouched} == untouched


def test_an_orphan_discarded_alone_wakes_nobody(
    conn: psycopg.Connection, database_url: str, make_store: MakeStore, stop: threading.Event
) -> None:
    job_id = insert_job(conn, state="running", attempt=5, max_attempts=5)
    rescuer = make_rescuer(make_store(), stop)
    with listen(database_url) as listener:
        assert rescuer.run_once() == 1
        assert received_before_sentinel(listener, conn) == []
    assert job_state(conn, job_id) == "discarded"


def test_the_rescuer_never_touches_another_queue(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    orphan = insert_job(conn, queue=OTHER_QUEUE, state="running", attempt=1)
    stuck = insert_job(conn, queue=OTHER_QUEUE, state="running", attempt=1, attempted_ago="2 hours")
    last = insert_job(conn, queue=OTHER_QUEUE, state="running", attempt=5, max_attempts=5)
    others = [orphan, stuck, last]
    before = {job_id: job_row_or_none(conn, job_id) for job_id in others}
    rescuer = make_rescuer(make_store(), stop, stuck_after=60)

    assert rescuer.run_once() == 0

    assert {job_id: job_row_or_none(conn, job_id) for job_id in others} == before
    # The same rows are orphans to that queue's own rescuer: the queue alone kept them out.
    set_queue(conn, OTHER_QUEUE)
    other_rescuer = make_rescuer(make_store(), stop, stuck_after=60, queue=OTHER_QUEUE)
    assert other_rescuer.run_once() == 3


def test_jobs_not_running_are_never_rescued(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    # None of them is leased, and all look old: only their state keeps them out.
    jobs = [
        insert_job(conn, state=state, attempt=1, attempted_ago="2 hours", finalized_ago="1 h")
        for state in ("completed", "cancelled", "discarded", "available", "retryable", "scheduled")
    ]
    jobs.append(insert_job(conn, state="pending"))
    before = {job_id: job_row_or_none(conn, job_id) for job_id in jobs}
    rescuer = make_rescuer(make_store(), stop, stuck_after=60)

    assert rescuer.run_once() == 0

    assert {job_id: job_row_or_none(conn, job_id) for job_id in jobs} == before


@pytest.mark.parametrize("outcome", ["commit", "rollback"])
def test_a_job_whose_outcome_is_being_recorded_is_not_rescued(
    conn: psycopg.Connection,
    database_url: str,
    make_store: MakeStore,
    stop: threading.Event,
    outcome: str,
) -> None:
    """The race of a rescue with a completion: the completing transaction holds the row while
    the lease is already gone. The rescuer skips the row rather than wait for it, and once the
    completion has committed finds a finished job; only a completion that never happened
    leaves an orphan to rescue."""
    insert_payment(conn)
    worker = make_store()
    job = claim(worker, "doomed-worker")
    assert job.lease_token is not None
    pid = lease_holder(conn, job.id)
    assert pid is not None
    rescuer = make_rescuer(make_store(), stop)
    with psycopg.connect(database_url) as completing:
        completing.execute(
            "UPDATE metadata.river_job SET state = 'completed', finalized_at = now()"
            " WHERE id = %s AND state = 'running'",
            (job.id,),
        )
        kill_lease_by_terminating(conn, worker, pid)

        started = time.monotonic()
        assert rescuer.run_once() == 0
        assert time.monotonic() - started < 2, "the rescuer waited for a locked job"

        if outcome == "commit":
            completing.commit()
        else:
            completing.rollback()

    if outcome == "commit":
        assert rescuer.run_once() == 0
        row = job_row(conn, job.id)
        assert (row["state"], row["errors"]) == ("completed", None)
    else:
        assert rescuer.run_once() == 1
        assert job_state(conn, job.id) == "retryable"


def test_a_killed_worker_process_job_is_found_by_the_very_next_rescue(
    conn: psycopg.Connection,
    database_url: str,
    standin: StandinProcess,
    make_store: MakeStore,
    tmp_path: Path,
) -> None:
    """A real `python -m worker`, SIGKILLed in the middle of its Stripe call. No time bound can
    be the reason for the rescue (stuck_after is an hour): the first run_once after the dead
    worker's lease backend is gone finds the job."""
    standin.admin.configure(latency_ms=2000)
    payment_id = insert_payment(conn)
    job_id = job_id_of(conn, payment_id)
    log = tmp_path / "worker.log"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": str(tmp_path),
        "PYTHONPATH": str(pg.ROOT),
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "STRIPE_READ_TIMEOUT": "30",
        "WORKER_ID": "doomed-worker",
        "LOG_LEVEL": "WARNING",
    }
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "worker"], cwd=pg.ROOT, env=env, stdout=out, stderr=out
        )
    try:
        wait_until(
            lambda: job_state(conn, job_id) == "running" and lease_holder(conn, job_id),
            timeout=15,
            what="the worker process holds the job",
        )
        wait_until(lambda: standin.admin.stats()["requests"]["total"] == 1, what="Stripe call")
        pid = lease_holder(conn, job_id)
        assert pid is not None
        assert application_name(conn, pid) == "payment-worker leases"
        rescuer = make_rescuer(make_store(), threading.Event(), stuck_after=3600)
        assert rescuer.run_once() == 0

        process.kill()
        killed = time.monotonic()
        process.wait(timeout=5)
        attempts = 0
        while True:
            gone = not backend_alive(conn, pid)
            attempts += 1
            rescued = rescuer.run_once()
            if rescued or gone:
                break
            assert time.monotonic() - killed < 10, "the lease outlived its worker"
            time.sleep(0.005)
        elapsed = time.monotonic() - killed
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    print(
        f"\nrescue after SIGKILL of the worker process: {elapsed * 1000:.1f} ms,"
        f" {attempts} run_once call(s)"
    )
    assert rescued == 1, log.read_text()
    assert elapsed < 10  # no keepalive, no stuck_after: the lease died with its connection
    row = job_row(conn, job_id)
    assert (row["state"], row["attempted_by"]) == ("retryable", ["doomed-worker"])
    # River's first backoff: due again about 1 s after the rescue (the scheduler, every
    # 0.5 s, then makes it available), so it still runs again well within 10 s.
    assert conn.execute(
        "SELECT scheduled_at - now() <= interval '1.1 s' FROM metadata.river_job WHERE id = %s",
        (job_id,),
    ).fetchone() == (True,)
    # The abandoned Stripe call ends inside this test, not in the next one's stand-in.
    wait_until(
        lambda: standin.admin.stats()["payment_intents_created"] == 1,
        what="the abandoned create to finish",
    )


# --- Cleaner --------------------------------------------------------------------------------


def make_cleaner(
    store: Store,
    stop: threading.Event,
    batch: int = 1000,
    completed_retention: float = 3600,
    discarded_retention: float = 4 * 3600,
) -> Cleaner:
    return Cleaner(
        store,
        Leadership(store, stop=stop),
        queue=QUEUE,
        stop=stop,
        completed_retention=completed_retention,
        discarded_retention=discarded_retention,
        batch=batch,
    )


def remaining(conn: psycopg.Connection, ids: list[int]) -> list[int]:
    rows = conn.execute(
        "SELECT id FROM metadata.river_job WHERE id = ANY(%s) ORDER BY id", (ids,)
    ).fetchall()
    return [row[0] for row in rows]


def test_the_cleaner_deletes_finalized_jobs_past_their_retention(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    old = [
        insert_job(conn, state="completed", finalized_ago="61 min"),
        insert_job(conn, state="cancelled", finalized_ago="2 hours"),
        insert_job(conn, state="discarded", finalized_ago="4 hours 1 min"),
        insert_job(conn, state="completed", finalized_ago="30 days"),
    ]
    kept = [
        insert_job(conn, state="completed", finalized_ago="59 min"),
        insert_job(conn, state="cancelled", finalized_ago="1 min"),
        # Older than the completed retention, not the discarded one.
        insert_job(conn, state="discarded", finalized_ago="3 hours"),
        insert_job(conn, state="discarded", finalized_ago="0 s"),
    ]
    # Never finalized, however old they look.
    kept += [
        insert_job(conn, state=state, attempt=1, attempted_ago="30 days")
        for state in ("running", "available", "retryable", "scheduled")
    ]
    kept.append(insert_job(conn, state="pending"))
    kept_before = {job_id: job_row_or_none(conn, job_id) for job_id in kept}
    cleaner = make_cleaner(make_store(), stop)

    assert cleaner.run_once() == len(old)

    assert remaining(conn, old) == []
    assert {job_id: job_row_or_none(conn, job_id) for job_id in kept} == kept_before
    assert cleaner.run_once() == 0


def test_the_cleaner_works_through_every_batch_in_one_pass_and_only_its_queue(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, state, attempt, max_attempts,"
        " attempted_at, finalized_at)"
        " SELECT q, 'test_kind', jsonb_build_object('n', n), 'completed', 1, 5,"
        "  now() - interval '3 hours', now() - make_interval(hours => 2, secs => n)"
        " FROM generate_series(1, 35) n, unnest(ARRAY[%s, %s]) q",
        (QUEUE, OTHER_QUEUE),
    )
    others = conn.execute(
        "SELECT * FROM metadata.river_job WHERE queue = %s ORDER BY id", (OTHER_QUEUE,)
    ).fetchall()
    assert len(others) == 35
    cleaner = make_cleaner(make_store(), stop, batch=10)

    assert cleaner.run_once() == 35

    assert conn.execute(
        "SELECT count(*) FROM metadata.river_job WHERE queue = %s", (QUEUE,)
    ).fetchone() == (0,)
    after = conn.execute(
        "SELECT * FROM metadata.river_job WHERE queue = %s ORDER BY id", (OTHER_QUEUE,)
    ).fetchall()
    assert after == others


@pytest.fixture
def worker_login(database_url: str) -> Iterator[str]:
    """A LOGIN role granted only payment_worker (roles are cluster-wide: dropped at the end)."""
    name = f"pw_test_{uuid4().hex[:12]}"
    with psycopg.connect(database_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
        try:
            admin.execute(sql.SQL("GRANT payment_worker TO {}").format(sql.Identifier(name)))
            yield name
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_the_cleaner_works_as_a_login_granted_only_payment_worker(
    conn: psycopg.Connection, database_url: str, worker_login: str, stop: threading.Event
) -> None:
    old = [insert_job(conn, state="completed", finalized_ago="2 hours") for _ in range(3)]
    old.append(insert_job(conn, state="discarded", finalized_ago="5 hours"))
    young = insert_job(conn, state="completed", finalized_ago="1 min")
    url = pg.url(str(conninfo_to_dict(database_url)["dbname"]), user=worker_login)
    with ConnectionPool(
        url, min_size=1, max_size=2, kwargs={"autocommit": True}, open=True
    ) as role_pool:
        store = Store(role_pool)
        try:
            with role_pool.connection() as role_conn:
                assert role_conn.execute("SELECT current_user").fetchone() == (worker_login,)
                with pytest.raises(psycopg.errors.InsufficientPrivilege):
                    role_conn.execute("DELETE FROM metadata.river_job WHERE id = %s", (young,))
            cleaner = make_cleaner(store, stop, batch=2)

            assert cleaner.run_once() == 4
        finally:
            store.close()

    assert remaining(conn, [*old, young]) == [young]


# --- Rescue backoff, River's way ----------------------------------------------------------------


@pytest.mark.parametrize(("errors", "base"), [(0, 1), (1, 16), (3, 256)])
def test_a_rescued_job_waits_rivers_backoff_for_its_errors_so_far(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event, errors: int, base: int
) -> None:
    """len(errors) + 1, counted before the rescue's own error: a job that keeps killing its
    worker waits 1, 16, 81, 256 s between attempts instead of burning them all at once."""
    job_id = insert_job(conn, state="running", attempt=errors + 1, max_attempts=25)
    conn.execute(
        "UPDATE metadata.river_job SET errors = ARRAY(SELECT jsonb_build_object("
        " 'at', now(), 'attempt', n, 'error', 'earlier', 'trace', '')"
        " FROM generate_series(1, %s) AS n) WHERE id = %s",
        (errors, job_id),
    )
    rescuer = make_rescuer(make_store(), stop)

    before = db_now(conn)
    (rescued,) = make_store().job_rescue_orphaned(3600, 10, RESCUE_ERROR)
    after = db_now(conn)

    assert rescued.state == "retryable"
    assert rescued.retry_in_seconds is not None
    assert 0.9 * base <= rescued.retry_in_seconds <= 1.1 * base
    row = job_row(conn, job_id)
    assert_retry_after(row, base, before, after)
    assert len(row["errors"]) == errors + 1
    assert rescuer.run_once() == 0


def test_the_databases_backoff_is_rivers_as_the_workers_is(conn: psycopg.Connection) -> None:
    """payments.retry_delay_seconds (the rescuer's) and worker/backoff.py agree."""
    for n, base in [(1, 1), (2, 16), (5, 625), (25, 25**4)]:
        (low, high) = conn.execute(
            "SELECT min(d), max(d) FROM (SELECT payments.retry_delay_seconds(%s) AS d"
            " FROM generate_series(1, 200)) AS s",
            (n,),
        ).fetchone() or (None, None)
        assert 0.9 * base <= low < high <= 1.1 * base, n
    assert conn.execute("SELECT payments.retry_delay_seconds(310)").fetchone() == (
        pytest.approx(MAX_DELAY_SECONDS),
    )


# --- Our queue's row in metadata.river_queue ----------------------------------------------------


def queue_row(conn: psycopg.Connection) -> tuple[Any, ...] | None:
    return conn.execute(
        "SELECT updated_at, paused_at FROM metadata.river_queue WHERE name = %s", (QUEUE,)
    ).fetchone()


def test_the_queue_keeper_keeps_our_queue_row_fresh_and_its_pause(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    assert queue_row(conn) is not None, "the deploy made our queue's row"
    conn.execute(
        "UPDATE metadata.river_queue SET updated_at = now() - interval '23 hours',"
        " paused_at = now() - interval '1 hour' WHERE name = %s",
        (QUEUE,),
    )
    paused_at = (queue_row(conn) or (None, None))[1]
    store = make_store()
    keeper = QueueKeeper(store, Leadership(store, stop=stop), queue=QUEUE, stop=stop)

    before = db_now(conn)
    keeper.run_once()

    updated_at, still_paused = queue_row(conn) or (None, None)
    assert updated_at is not None and updated_at >= before - timedelta(seconds=1)
    assert still_paused == paused_at, "a pause set in River UI must survive the touch"
    assert keeper.paused is True
    conn.execute("UPDATE metadata.river_queue SET paused_at = NULL WHERE name = %s", (QUEUE,))
    keeper.run_once()
    assert keeper.paused is False


def test_the_queue_keeper_makes_the_row_again_after_rivers_queue_cleaner(
    conn: psycopg.Connection, make_store: MakeStore, stop: threading.Event
) -> None:
    # River's QueueCleaner: rows not updated within its retention (24 h) are deleted.
    conn.execute("DELETE FROM metadata.river_queue WHERE name = %s", (QUEUE,))
    store = make_store()

    QueueKeeper(store, Leadership(store, stop=stop), queue=QUEUE, stop=stop).run_once()

    row = queue_row(conn)
    assert row is not None and row[1] is None
