"""Kinds and what giving one up means: the database applies a kind's given-up effect
whoever discards, cancels or deletes its job - our executor, our rescuer, a River
client's rescuer, River UI - and a worker whose kinds disagree with it refuses to start."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from stripe_standin.process import StandinProcess
from tests.integration.conftest import MakeRole, role_url, worker_config
from tests.integration.rows import (
    CONFIGURED,
    claim,
    insert_payment,
    job_id_of,
    job_row,
    payment_row,
    set_queue,
)
from worker.handlers import EVENT_GIVEN_UP, PAYMENT_GIVEN_UP, caller_reason
from worker.operations import OPERATION_GIVEN_UP, REFUND_GIVEN_UP
from worker.service import StartupError, Worker
from worker.store import Store

# River's rescuer, as its driver runs it (JobRescueMany), for a kind it has no worker for:
# "Attempted to rescue unhandled job kind, discarding".
RIVER_RESCUE_DISCARD = """
UPDATE metadata.river_job
SET errors = array_append(errors, jsonb_build_object(
        'at', now(), 'attempt', attempt, 'error', 'Stuck job rescued by Rescuer', 'trace', 'TODO')),
    finalized_at = now(),
    scheduled_at = now(),
    state = 'discarded'
WHERE id = %s AND state = 'running'
"""


@pytest.fixture
def river_client(database_url: str, login_role: MakeRole) -> Iterator[psycopg.Connection]:
    """A session of a River client's login: River's tables, and nothing of ours."""
    role = login_role()
    grants = [
        "USAGE ON SCHEMA metadata",
        "SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA metadata",
    ]
    with psycopg.connect(database_url, autocommit=True) as admin:
        for grant in grants:
            admin.execute(sql.SQL(f"GRANT {grant} TO {{}}").format(sql.Identifier(role)))
        with psycopg.connect(role_url(database_url, role), autocommit=True) as river:
            yield river
        # login_role drops the role after this: nothing may still depend on it.
        for grant in reversed(grants):
            admin.execute(sql.SQL(f"REVOKE {grant} FROM {{}}").format(sql.Identifier(role)))


def test_a_river_rescuer_discarding_our_stuck_job_fails_its_payment(
    conn: psycopg.Connection, store: Store, river_client: psycopg.Connection
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    job = claim(store)
    with pytest.raises(psycopg.errors.InsufficientPrivilege):
        river_client.execute("SELECT 1 FROM payments.transactions")

    assert river_client.execute(RIVER_RESCUE_DISCARD, (job.id,)).rowcount == 1

    stored = payment_row(conn, payment_id)
    assert (stored["status"], stored["error_message"]) == ("failed", caller_reason(payment_id))
    # Our worker's late answer is refused: the job is no longer running.
    assert store.job_complete(job) is False


def test_a_job_cancelled_in_river_ui_fails_its_payment(
    conn: psycopg.Connection, river_client: psycopg.Connection
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    # River's JobCancel on a job that is not running.
    river_client.execute(
        "UPDATE metadata.river_job SET state = 'cancelled', finalized_at = now(),"
        " metadata = jsonb_set(metadata, '{cancel_attempted_at}', to_jsonb(now()))"
        " WHERE id = %s",
        (job_id_of(conn, payment_id),),
    )

    assert payment_row(conn, payment_id)["status"] == "failed"


def test_an_unfinished_job_deleted_in_river_ui_fails_its_payment(
    conn: psycopg.Connection, river_client: psycopg.Connection
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)

    river_client.execute(
        "DELETE FROM metadata.river_job WHERE id = %s", (job_id_of(conn, payment_id),)
    )

    assert payment_row(conn, payment_id)["status"] == "failed"


def test_a_finished_job_deleted_by_a_cleaner_changes_no_payment(
    conn: psycopg.Connection, river_client: psycopg.Connection
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    job_id = job_id_of(conn, payment_id)
    river_client.execute(
        "UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = %s",
        (job_id,),
    )

    # River's JobDeleteBefore: finalized jobs past their retention.
    river_client.execute("DELETE FROM metadata.river_job WHERE id = %s", (job_id,))

    assert payment_row(conn, payment_id)["status"] == "pending_intent"


def test_only_our_queues_jobs_have_an_effect(
    conn: psycopg.Connection, river_client: psycopg.Connection
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    job_id = job_id_of(conn, payment_id)
    # Another application's job that happens to share the kind and the args' shape.
    conn.execute("UPDATE metadata.river_job SET queue = 'default' WHERE id = %s", (job_id,))

    river_client.execute(
        "UPDATE metadata.river_job SET state = 'discarded', finalized_at = now() WHERE id = %s",
        (job_id,),
    )

    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    assert job_row(conn, job_id)["state"] == "discarded"


def test_a_discard_the_effect_cannot_apply_is_rolled_back_whole(
    conn: psycopg.Connection, store: Store
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    job = claim(store)
    conn.execute(
        "CREATE FUNCTION pg_temp.refuse() RETURNS trigger LANGUAGE plpgsql AS"
        " $$BEGIN RAISE EXCEPTION 'payment update refused'; END$$"
    )
    conn.execute(
        "CREATE TRIGGER refuse BEFORE UPDATE ON payments.transactions"
        " FOR EACH ROW EXECUTE FUNCTION pg_temp.refuse()"
    )
    entry = {"at": "2026-01-01T00:00:00+00:00", "attempt": 1, "error": "x", "trace": ""}

    with pytest.raises(psycopg.errors.RaiseException, match="payment update refused"):
        store.job_discard(job, entry)

    assert job_row(conn, job.id)["state"] == "running"
    assert payment_row(conn, payment_id)["status"] == "pending_intent"


def test_the_given_up_effect_is_the_one_the_handlers_register(conn: psycopg.Connection) -> None:
    kinds = conn.execute("SELECT kind, given_up::text FROM payments.job_kind ORDER BY 1").fetchall()
    assert kinds == [
        ("apply_stripe_event", EVENT_GIVEN_UP),
        ("cancel_payment", OPERATION_GIVEN_UP),
        ("capture_payment", OPERATION_GIVEN_UP),
        ("create_payment_intent", PAYMENT_GIVEN_UP),
        ("create_refund", REFUND_GIVEN_UP),
        ("sync_payment", None),
    ]


@pytest.mark.parametrize(
    "change",
    [
        "UPDATE payments.job_kind SET given_up = NULL",
        "DELETE FROM payments.job_kind",
    ],
    ids=["effect-missing", "kind-unknown"],
)
def test_a_worker_whose_kinds_the_database_disagrees_with_refuses_to_start(
    conn: psycopg.Connection,
    database_url: str,
    standin: StandinProcess,
    pool: ConnectionPool,
    change: str,
) -> None:
    conn.execute(change)

    with pytest.raises(StartupError, match="create_payment_intent") as err:
        Worker(worker_config(database_url, standin.url), pool)

    assert "payments.job_kind" in str(err.value)


def test_a_worker_on_another_queue_still_sees_the_effect_follow_it(
    conn: psycopg.Connection, store: Store
) -> None:
    """The effect is bound to payments.config.queue, whatever its name."""
    set_queue(conn, "payments_eu")
    payment_id = insert_payment(conn, currency=CONFIGURED)
    assert job_row(conn, job_id_of(conn, payment_id))["queue"] == "payments_eu"
    job = claim(store)
    entry = {"at": "2026-01-01T00:00:00+00:00", "attempt": 1, "error": "x", "trace": ""}

    assert store.job_discard(job, entry) is True

    assert payment_row(conn, payment_id)["status"] == "failed"
