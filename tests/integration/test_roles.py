"""Least privilege: the worker and client roles, row-level security, the guard trigger,
and the RPC's loopback connection surviving the loss of its backend."""

from __future__ import annotations

import time
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from stripe_standin.process import StandinProcess
from tests.integration.conftest import (
    MakeRole,
    RunningWorker,
    connect_as,
    role_url,
    worker_running_at,
)
from tests.integration.rows import insert_payment

RPC = "SELECT create_payment_intent_sync(%s, %s)"

# --- the worker's role --------------------------------------------------------------------------


def test_a_whole_worker_runs_as_a_payment_worker_login(
    conn: psycopg.Connection,
    database_url: str,
    standin: StandinProcess,
    login_role: MakeRole,
) -> None:
    url = role_url(database_url, login_role("payment_worker"))
    with worker_running_at(url, standin.url) as running:
        worker = running.worker
        row = conn.execute(RPC, (2500, "least privilege")).fetchone()
        assert row is not None
        result = row[0]
        assert result["status"] == "pending"
        # Through the scheduler too: a retry needs UPDATE and pg_notify, nothing more.
        # Committed together, so the job is never seen available before it is retryable.
        with conn.transaction():
            payment_id = insert_payment(conn)
            conn.execute(
                "UPDATE metadata.river_job SET state = 'retryable',"
                " scheduled_at = now() - interval '1 s' WHERE args->>'payment_id' = %s",
                (str(payment_id),),
            )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            status = conn.execute(
                "SELECT status FROM payments.transactions WHERE id = %s", (payment_id,)
            ).fetchone()
            if status == ("pending",):
                break
            worker.stop.wait(0.02)
        assert status == ("pending",)
    intents = standin.admin.intents_with_metadata("payment_id", result["payment_id"])
    assert [intent["client_secret"] for intent in intents] == [result["client_secret"]]
    jobs = conn.execute("SELECT state, attempted_by FROM metadata.river_job ORDER BY id").fetchall()
    assert jobs == [("completed", ["test-worker"]), ("completed", ["test-worker"])]


def database_state(conn: psycopg.Connection) -> tuple[object, ...]:
    """Every row a worker login could want to change: payments, jobs, config, leases."""
    return tuple(
        conn.execute(query).fetchall()
        for query in (
            "SELECT * FROM payments.transactions ORDER BY id",
            "SELECT * FROM metadata.river_job ORDER BY id",
            "SELECT * FROM payments.config",
            "SELECT * FROM payments.currency ORDER BY code",
            "SELECT * FROM payments.job_lease ORDER BY job_id",
            "SELECT * FROM payments.worker_leader",
            "SELECT * FROM payments.stripe_events ORDER BY id",
        )
    )


# What the audit did as payment_worker; each must now be refused outright.
WORKER_ATTACKS = {
    "read-events": "SELECT payload FROM payments.stripe_events",
    "mark-event-applied": "UPDATE payments.stripe_events SET outcome = 'applied'",
    "set-succeeded": "UPDATE payments.transactions SET status = 'succeeded'",
    "swap-client-secret": "UPDATE payments.transactions"
    " SET provider_client_secret = 'pi_m_secret_m'",
    "fail-pending": "UPDATE payments.transactions SET status = 'failed', error_message = 'x'"
    " WHERE status = 'pending'",
    "read-client-secrets": "SELECT provider_client_secret FROM payments.transactions",
    "read-payments": "SELECT id, amount FROM payments.transactions",
    # Whatever columns it has (loopback_dsn, say): none is the worker's to read.
    "read-all-config": "SELECT * FROM payments.config",
    "read-config": "SELECT queue FROM payments.config",
    "insert-payment": "INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')",
    "delete-payments": "DELETE FROM payments.transactions",
    "change-amount": "UPDATE payments.transactions SET amount = 1",
    "change-owner": "UPDATE payments.transactions SET user_id = 'mallory'",
    "call-the-rpc": "SELECT create_payment_intent_sync(2500, 'x')",
    "read-jobs": "SELECT id FROM metadata.river_job",
    "rewrite-kind-our-queue": "UPDATE metadata.river_job SET kind = 'evil'"
    " WHERE queue = 'payments'",
    "rewrite-args-our-queue": "UPDATE metadata.river_job SET args = '{\"payment_id\": null}'"
    " WHERE queue = 'payments'",
    "rewrite-state-our-queue": "UPDATE metadata.river_job SET state = 'completed',"
    " finalized_at = now() WHERE queue = 'payments'",
    "rewrite-kind-other-queue": "UPDATE metadata.river_job SET kind = 'evil'"
    " WHERE queue = 'default'",
    "rewrite-state-other-queue": "UPDATE metadata.river_job SET state = 'discarded',"
    " finalized_at = now() WHERE queue = 'default'",
    "insert-job": "INSERT INTO metadata.river_job (kind, args, max_attempts) VALUES ('k', '{}', 1)",
    "delete-jobs": "DELETE FROM metadata.river_job",
    "change-config": "UPDATE payments.config SET currency = 'EUR'",
    "change-min-retention": "UPDATE payments.config SET min_job_retention = '0 s'",
    "change-currency": "UPDATE payments.currency SET min_amount = 1",
    "read-leases": "SELECT token FROM payments.job_lease",
    "forge-lease": "UPDATE payments.job_lease SET backend_pid = pg_backend_pid()",
    "drop-leases": "DELETE FROM payments.job_lease",
    "seize-leadership": "INSERT INTO payments.worker_leader (leader_id, backend_pid,"
    " backend_start, elected_at, expires_at) VALUES ('m', 1, now(), now(), 'infinity')",
    "internal-helper": "SELECT payments.job_release(1, 1, gen_random_uuid())",
    "liveness-helper": "SELECT payments.backend_alive(1, now())",
    "read-loopback-password": "SELECT password FROM payments.loopback",
    "loopback-writer-function": "SELECT payments.writer_payment_get(gen_random_uuid(), NULL)",
    "dblink": "SELECT payments.dblink_connect('x', 'dbname=postgres')",
}

# The same for a client: beyond its two RPCs and its own rows, nothing.
CLIENT_ATTACKS = {
    "read-events": "SELECT payload FROM payments.stripe_events",
    "record-event": "SELECT payments.stripe_event_record('{}', 'webhook')",
    "read-config": "SELECT * FROM payments.config",
    "read-loopback-password": "SELECT password FROM payments.loopback",
    "set-authenticators": "UPDATE payments.config SET authenticator_roles = '{}'",
    "raise-the-cap": "UPDATE payments.config SET max_sync_timeout = '1 year'",
    "fail-own-payment": "UPDATE payments.transactions SET status = 'failed', error_message = 'x'",
    "insert-payment": "INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')",
    "read-jobs": "SELECT * FROM metadata.river_job",
    "claim-jobs": "SELECT * FROM payments.job_claim(10, 'client')",
    "take-leadership": "SELECT payments.leader_elect('client', 600)",
    "loopback-writer-function": "SELECT payments.writer_payment_record(gen_random_uuid(), 'x',"
    " NULL, 2500, 'USD', NULL, repeat('0', 64))",
    "ticket-helper": "SELECT payments.loopback_ticket('anything')",
    "dblink": "SELECT payments.dblink_connect('x', 'dbname=postgres')",
}


@pytest.mark.parametrize("statement", list(CLIENT_ATTACKS.values()), ids=list(CLIENT_ATTACKS))
def test_the_client_role_cannot(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, statement: str
) -> None:
    client = login_role("payment_client")
    insert_payment(conn, owner_role=client)
    before = database_state(conn)
    with connect_as(database_url, client) as client_conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            client_conn.execute(statement)
        # Its own payment is still readable on the same session.
        count = client_conn.execute("SELECT count(*) FROM payments.transactions").fetchone()
        assert count == (1,)
    assert database_state(conn) == before


@pytest.mark.parametrize("statement", list(WORKER_ATTACKS.values()), ids=list(WORKER_ATTACKS))
def test_the_worker_role_cannot(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, statement: str
) -> None:
    answered = insert_payment(conn)
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_1',"
        " provider_client_secret = 'pi_1_secret_real' WHERE id = %s",
        (answered,),
    )
    insert_payment(conn)
    conn.execute(
        "INSERT INTO metadata.river_job (kind, args, max_attempts, queue)"
        " VALUES ('send_email', '{}', 25, 'default')"
    )
    before = database_state(conn)
    with connect_as(database_url, login_role("payment_worker")) as worker_conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            worker_conn.execute(statement)
        # What it may do still works on the same session, and says no more than it should.
        assert worker_conn.execute("SELECT * FROM payments.worker_settings()").fetchall() == [
            ("USD", "payments")
        ]
    assert database_state(conn) == before


# The webhook receiver's login: it records verified events through one function, and that
# is all; a stolen receiver login reads no payment, no secret, no event.
WEBHOOK_ATTACKS = {
    "read-payments": "SELECT provider_client_secret FROM payments.transactions",
    "read-events": "SELECT payload FROM payments.stripe_events",
    "insert-event": "INSERT INTO payments.stripe_events (id, type, created, livemode, payload,"
    " source, outcome, processed_at) VALUES ('evt_x', 't', now(), false, '{}', 'webhook',"
    " 'ignored', now())",
    "set-succeeded": "UPDATE payments.transactions SET status = 'succeeded'",
    "read-jobs": "SELECT * FROM metadata.river_job",
    "enqueue-job": "INSERT INTO metadata.river_job (kind, args, max_attempts, queue)"
    " VALUES ('apply_stripe_event', '{}', 5, 'payments')",
    "claim-jobs": "SELECT * FROM payments.job_claim(10, 'webhook')",
    "resync": "SELECT payments.resync(gen_random_uuid())",
    "observation-token": "SELECT payments.observation_token()",
    "create-payment": "SELECT create_payment_intent_sync(2500, 'x')",
    "read-loopback-password": "SELECT password FROM payments.loopback",
}


@pytest.mark.parametrize("statement", list(WEBHOOK_ATTACKS.values()), ids=list(WEBHOOK_ATTACKS))
def test_the_webhook_role_cannot(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, statement: str
) -> None:
    payment = insert_payment(conn)
    conn.execute(
        "SELECT payments.stripe_event_record(%s, 'webhook')",
        (
            '{"id": "evt_roles", "object": "event", "type": "payment_intent.created",'
            ' "created": 1700000000, "livemode": false, "data": {"object":'
            ' {"object": "payment_intent", "id": "pi_roles", "metadata": {"payment_id": "'
            + str(payment)
            + '"}}}}',
        ),
    )
    before = database_state(conn)
    with (
        connect_as(database_url, login_role("payment_webhook")) as hook_conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        hook_conn.execute(statement)
    assert database_state(conn) == before


# --- the client's role and row-level security -------------------------------------------------


def test_public_cannot_call_the_rpc(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole
) -> None:
    for function in ("create_payment_intent_sync(numeric, text)", "get_payment(uuid)"):
        row = conn.execute(
            "SELECT has_function_privilege('public', %s, 'execute')", (f"public.{function}",)
        ).fetchone()
        assert row == (False,), function
    with connect_as(database_url, login_role()) as nobody:
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute(RPC, (2500, "x"))
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            nobody.execute("SELECT get_payment(%s)", (uuid4(),))
    assert conn.execute("SELECT count(*) FROM payments.transactions").fetchone() == (0,)


# --- the guard trigger, for every role ----------------------------------------------------------


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ("amount = amount + 1", "cannot change"),
        ("currency = 'EUR'", "cannot change"),
        ("user_id = 'mallory'", "cannot change"),
        ("description = 'other'", "cannot change"),
        ("status = 'pending_intent'", "status cannot go from pending to pending_intent"),
        ("provider_payment_id = 'pi_other'", "already has PaymentIntent pi_first"),
    ],
)
def test_the_guard_refuses_even_the_admin(
    conn: psycopg.Connection, change: str, message: str
) -> None:
    payment_id = insert_payment(conn)
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_first',"
        " provider_client_secret = 'pi_first_secret_x' WHERE id = %s",
        (payment_id,),
    )
    is_superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    assert conn.execute(is_superuser).fetchone() == (True,)
    before = conn.execute(
        "SELECT * FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()

    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(
            sql.SQL("UPDATE payments.transactions SET {} WHERE id = %s").format(sql.SQL(change)),
            (payment_id,),
        )

    assert message in str(err.value)
    after = conn.execute(
        "SELECT * FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()
    assert after == before


def test_the_guard_lets_status_move_forward(conn: psycopg.Connection) -> None:
    payment_id = insert_payment(conn)
    for status in ("pending", "succeeded"):
        conn.execute(
            "UPDATE payments.transactions SET status = %s, provider_payment_id = 'pi_1',"
            " provider_client_secret = 'pi_1_secret_x' WHERE id = %s",
            (status, payment_id),
        )
    row = conn.execute(
        "SELECT status FROM payments.transactions WHERE id = %s", (payment_id,)
    ).fetchone()
    assert row == ("succeeded",)
    with pytest.raises(psycopg.errors.RaiseException, match="from succeeded to pending"):
        conn.execute(
            "UPDATE payments.transactions SET status = 'pending' WHERE id = %s", (payment_id,)
        )


# --- the RPC's loopback connection --------------------------------------------------------------


def loopback_pids(conn: psycopg.Connection) -> list[int]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT pid FROM pg_stat_activity"
            " WHERE application_name = 'payment_worker_loopback' AND datname = current_database()"
        )
    ]


def test_the_rpc_recovers_from_a_killed_loopback_connection(
    conn: psycopg.Connection, database_url: str, running_worker: RunningWorker
) -> None:
    row = conn.execute(RPC, (2500, "first")).fetchone()
    assert row is not None
    first = row[0]["payment_id"]
    (pid,) = loopback_pids(conn)
    with psycopg.connect(database_url, autocommit=True) as admin:
        terminated = admin.execute("SELECT pg_terminate_backend(%s, 5000)", (pid,)).fetchone()
        assert terminated == (True,)
    assert loopback_pids(conn) == []

    row = conn.execute(RPC, (3100, "after the loopback died")).fetchone()

    assert row is not None
    second = row[0]
    assert second["status"] == "pending"
    assert second["payment_id"] != first
    payments = conn.execute(
        "SELECT amount, description, status FROM payments.transactions ORDER BY created_at"
    ).fetchall()
    assert payments == [(2500, "first", "pending"), (3100, "after the loopback died", "pending")]
    new_pids = loopback_pids(conn)
    assert len(new_pids) == 1
    assert new_pids != [pid]


# --- what each group may execute and read, as the README's roles table says ----------------------

EXECUTES = {
    "payment_client": {
        "cancel_payment(uuid,text)",
        "create_payment_intent_sync(numeric,text)",
        "create_payment_intent_sync(numeric,text,text)",
        "get_payment(uuid)",
        "payments.caller_owns(text,text)",
        "payments.caller_user_id()",
        "payments.resync(uuid)",
    },
    "payment_operator": {
        "cancel_payment(uuid,text)",
        "capture_payment(uuid,numeric)",
        "get_payment(uuid)",
        "payments.caller_owns(text,text)",
        "payments.caller_user_id()",
        "payments.resync(uuid)",
        "refund_payment(uuid,numeric,text)",
    },
    "payment_monitor": {
        "payments.job_oldest_available_age()",
        "payments.job_unfinished_counts()",
        "payments.payment_authorization_expiring(double precision)",
        "payments.payment_open_counts()",
        "payments.payment_recent_counts()",
        "payments.refund_open_counts()",
        "payments.stripe_event_unapplied()",
    },
    "payment_webhook": {"payments.stripe_event_record(jsonb,text)"},
    "public": set(),
}
ALL_COLUMNS = "*"
READS = {
    "payment_client": {
        ("payments.transactions", ALL_COLUMNS),
        ("payments.refunds", "but who asked"),
    },
    "payment_operator": {
        ("payments.transactions", "but provider_client_secret"),
        ("payments.refunds", ALL_COLUMNS),
        ("payments.payment_operations", ALL_COLUMNS),
    },
    "payment_monitor": set(),
    "payment_webhook": set(),
    "payment_worker": set(),
    "public": set(),
}


@pytest.mark.parametrize("role", sorted(EXECUTES))
def test_each_group_executes_exactly_what_the_readme_lists(
    conn: psycopg.Connection, role: str
) -> None:
    executes = {
        row[0]
        for row in conn.execute(
            "SELECT p.oid::regprocedure::text FROM pg_proc AS p"
            " WHERE p.pronamespace::regnamespace::text IN ('payments', 'public')"
            "   AND has_function_privilege(%s, p.oid, 'EXECUTE')",
            (role,),
        )
    }
    assert executes == EXECUTES[role]


@pytest.mark.parametrize("role", sorted(READS))
def test_each_group_reads_exactly_what_the_readme_lists(
    conn: psycopg.Connection, role: str
) -> None:
    """Which columns of which of our tables the group may SELECT (row-level security then
    narrows the rows); none may write any."""
    readable: dict[str, set[str]] = {}
    for table, column, writable in conn.execute(
        "SELECT c.oid::regclass::text, a.attname::text,"
        "       has_column_privilege(%(role)s, c.oid, a.attnum, 'INSERT, UPDATE, REFERENCES')"
        "       OR has_table_privilege(%(role)s, c.oid, 'DELETE, TRUNCATE, TRIGGER')"
        " FROM pg_class AS c JOIN pg_attribute AS a ON a.attrelid = c.oid"
        " WHERE c.relnamespace::regnamespace::text IN ('payments', 'metadata')"
        "   AND c.relkind IN ('r', 'v', 'm', 'p') AND a.attnum > 0 AND NOT a.attisdropped"
        "   AND (has_column_privilege(%(role)s, c.oid, a.attnum, 'SELECT, INSERT, UPDATE')"
        "        OR has_table_privilege(%(role)s, c.oid, 'DELETE, TRUNCATE, TRIGGER'))",
        {"role": role},
    ):
        assert not writable, (table, column)
        readable.setdefault(table, set()).add(column)
    all_columns = {
        table: {
            row[0]
            for row in conn.execute(
                "SELECT attname::text FROM pg_attribute WHERE attrelid = %s::regclass"
                " AND attnum > 0 AND NOT attisdropped",
                (table,),
            )
        }
        for table in ("payments.transactions", "payments.refunds", "payments.payment_operations")
    }
    but = {
        "but provider_client_secret": {"provider_client_secret"},
        "but who asked": {"requested_role", "requested_user_id"},
        ALL_COLUMNS: set(),
    }
    assert readable == {table: all_columns[table] - but[which] for table, which in READS[role]}
