"""The sqitch project with real sqitch: deploy, verify, revert, variables, living beside
an existing River install, and River's migration 007 still applying to the result.

Each test makes its own empty database and drops it at the end."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from tests import pg

MakeDatabase = Callable[[], str]


@pytest.fixture
def empty_database() -> Iterator[MakeDatabase]:
    """Creates empty databases with unique names; drops them (and their sessions) at the end."""
    created: list[str] = []
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:

        def make() -> str:
            name = f"pw_sqitch_{uuid4().hex[:12]}"
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
            created.append(name)
            return name

        yield make
        for name in created:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
            # Its loopback login, which a test that did not revert leaves behind.
            admin.execute(
                sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(f"payments_writer_{name}"))
            )


def sqitch_ok(command: str, dbname: str, *args: str) -> str:
    result = pg.sqitch(command, dbname, *args, check=False)
    assert result.returncode == 0, f"sqitch {command} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def connect(dbname: str) -> psycopg.Connection:
    return psycopg.connect(pg.url(dbname), autocommit=True)


def schemas(conn: psycopg.Connection) -> set[str]:
    return {
        row[0]
        for row in conn.execute(
            "SELECT nspname FROM pg_namespace WHERE nspname IN ('payments', 'metadata')"
        )
    }


def test_deploy_verify_revert_deploy_on_an_empty_database(empty_database: MakeDatabase) -> None:
    db = empty_database()

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert schemas(conn) == {"payments", "metadata"}
        assert conn.execute("SELECT currency, queue FROM payments.config").fetchone() == (
            "USD",
            "payments",
        )
        comment = conn.execute(
            "SELECT obj_description('metadata.river_job'::regclass, 'pg_class')"
        ).fetchone()
        assert comment == ("created by payment-worker (sqitch change river_schema)",)

    sqitch_ok("revert", db, "-y")
    with connect(db) as conn:
        assert schemas(conn) == set()
        assert conn.execute(
            "SELECT count(*) FROM pg_proc WHERE proname IN"
            " ('create_payment_intent_sync', 'get_payment')"
        ).fetchone() == (0,)
        assert conn.execute(
            "SELECT count(*) FROM pg_extension WHERE extname = 'dblink'"
        ).fetchone() == (0,)

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert schemas(conn) == {"payments", "metadata"}
        # Deployed for real: a payment gets its job, and its job notifies.
        conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
        job = conn.execute("SELECT kind, queue, state FROM metadata.river_job").fetchone()
        assert job == ("create_payment_intent", "payments", "available")


def test_deploy_with_currency_eur(empty_database: MakeDatabase) -> None:
    db = empty_database()

    sqitch_ok("deploy", db, "--set", "currency=EUR")

    with connect(db) as conn:
        assert conn.execute("SELECT currency FROM payments.config").fetchone() == ("EUR",)
        # The RPC charges in it: validation quotes EUR's limits.
        with pytest.raises(psycopg.errors.InvalidParameterValue, match="for EUR, got 10"):
            conn.execute("SELECT create_payment_intent_sync(10, 'x')")


def test_an_existing_river_install_survives_revert(empty_database: MakeDatabase) -> None:
    db = empty_database()
    sqitch_ok("deploy", db)
    with connect(db) as conn:
        # As if River's own migrations had made the tables: no marker of ours.
        conn.execute("COMMENT ON TABLE metadata.river_job IS NULL")
        row = conn.execute(
            "INSERT INTO metadata.river_job (kind, args, max_attempts, queue)"
            " VALUES ('send_email', '{\"to\": \"a@example.com\"}', 25, 'default') RETURNING id"
        ).fetchone()
        assert row is not None
        river_job_id = row[0]

    sqitch_ok("revert", db, "-y")

    with connect(db) as conn:
        assert schemas(conn) == {"metadata"}
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT relname FROM pg_class WHERE relnamespace = 'metadata'::regnamespace"
                " AND relkind = 'r'"
            )
        }
        assert {
            "river_job",
            "river_migration",
            "river_queue",
            "river_leader",
            "river_client",
            "river_client_queue",
        } <= tables
        assert conn.execute("SELECT id, kind, state FROM metadata.river_job").fetchall() == [
            (river_job_id, "send_email", "available")
        ]
        # Our trigger went with our change; River's data stayed.
        assert conn.execute(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'metadata.river_job'::regclass"
            " AND tgname = 'river_job_notify_insert'"
        ).fetchone() == (0,)

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert schemas(conn) == {"payments", "metadata"}
        assert conn.execute("SELECT id, kind FROM metadata.river_job").fetchall() == [
            (river_job_id, "send_email")
        ]
        comment = conn.execute(
            "SELECT obj_description('metadata.river_job'::regclass, 'pg_class')"
        ).fetchone()
        assert comment == (None,), "River's table must not be claimed as ours"


def test_a_river_install_older_than_migration_006_is_refused(
    empty_database: MakeDatabase,
) -> None:
    db = empty_database()
    with connect(db) as conn:
        conn.execute("CREATE SCHEMA metadata")
        conn.execute(
            "CREATE TABLE metadata.river_job (id bigserial PRIMARY KEY, args jsonb NOT NULL,"
            " kind text NOT NULL, queue text NOT NULL DEFAULT 'default')"
        )
        conn.execute("INSERT INTO metadata.river_job (args, kind) VALUES ('{}', 'old_job')")

    result = pg.sqitch("deploy", db, check=False)

    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "metadata.river_job exists but predates River migration 006" in output
    with connect(db) as conn:
        assert schemas(conn) == {"metadata"}
        assert conn.execute("SELECT kind FROM metadata.river_job").fetchall() == [("old_job",)]
        assert conn.execute(
            "SELECT count(*) FROM pg_class WHERE relnamespace = 'metadata'::regnamespace"
            " AND relkind = 'r'"
        ).fetchone() == (1,)


# What River's migration 007 ("main" line) does to the schema, in schema `metadata`.
RIVER_MIGRATION_007 = [
    """CREATE TABLE metadata.river_notification (
        id bigserial PRIMARY KEY,
        created_at timestamptz NOT NULL DEFAULT now(),
        payload text NOT NULL,
        topic text NOT NULL,
        CONSTRAINT topic_length CHECK (length(topic) > 0 AND length(topic) < 128)
    )""",
    "CREATE INDEX river_notification_created_at_idx ON metadata.river_notification (created_at)",
    "CREATE INDEX river_notification_topic_id_idx ON metadata.river_notification (topic, id)",
    "DROP TABLE metadata.river_client_queue",
    "DROP TABLE metadata.river_client",
    "ALTER TABLE metadata.river_job ALTER COLUMN max_attempts SET DEFAULT 25",
    "ALTER TABLE metadata.river_queue ALTER COLUMN updated_at SET DEFAULT CURRENT_TIMESTAMP",
    "INSERT INTO metadata.river_migration (line, version) VALUES ('main', 7)",
]


def test_river_migration_007_applies_to_the_deployed_schema(
    empty_database: MakeDatabase,
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db)

    with connect(db) as conn:
        with conn.transaction():
            for statement in RIVER_MIGRATION_007:
                conn.execute(statement)

        versions = conn.execute(
            "SELECT version FROM metadata.river_migration WHERE line = 'main' ORDER BY version"
        ).fetchall()
        assert versions == [(v,) for v in range(1, 8)]
        # Our side still works on the migrated tables.
        conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
        job = conn.execute("SELECT kind, max_attempts FROM metadata.river_job").fetchone()
        assert job == ("create_payment_intent", 5)

    sqitch_ok("verify", db)


def metadata_tables(conn: psycopg.Connection) -> set[str]:
    return {
        row[0]
        for row in conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'metadata'::regnamespace"
            " AND relkind IN ('r', 'p')"
        )
    }


def test_revert_after_river_migration_007_keeps_rivers_tables_then_deploys_again(
    empty_database: MakeDatabase,
) -> None:
    """River's migrator ran after us: the tables and their history are River's now. Revert
    used to fail at river_client_queue (gone with 007) and leave the database half-reverted,
    and a working revert would have dropped River's tables, the marker still saying ours."""
    db = empty_database()
    sqitch_ok("deploy", db)
    with connect(db) as conn:
        with conn.transaction():
            for statement in RIVER_MIGRATION_007:
                conn.execute(statement)
        conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
        river_job = conn.execute(
            "INSERT INTO metadata.river_job (kind, args) VALUES ('send_email', '{}')"
            " RETURNING id, max_attempts"
        ).fetchone()
        assert river_job is not None and river_job[1] == 25
        conn.execute("INSERT INTO metadata.river_queue (name) VALUES ('default')")
        tables = metadata_tables(conn)
        assert "river_notification" in tables and "river_client" not in tables

    result = pg.sqitch("revert", db, "-y", check=False)

    assert result.returncode == 0, result.stdout + result.stderr
    with connect(db) as conn:
        assert schemas(conn) == {"metadata"}
        assert metadata_tables(conn) == tables
        assert conn.execute(
            "SELECT line, max(version) FROM metadata.river_migration GROUP BY line"
        ).fetchall() == [("main", 7)]
        # River's job and queue stay; ours went with our changes (its row in river_queue too).
        assert conn.execute("SELECT id, kind FROM metadata.river_job ORDER BY id").fetchall() == [
            (river_job[0], "send_email")
        ]
        assert conn.execute("SELECT name FROM metadata.river_queue").fetchall() == [("default",)]
        assert (
            conn.execute(
                "SELECT tgname FROM pg_trigger WHERE tgrelid = 'metadata.river_job'::regclass"
                " AND NOT tgisinternal"
            ).fetchall()
            == []
        )

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert schemas(conn) == {"payments", "metadata"}
        assert metadata_tables(conn) == tables
        conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
        assert conn.execute(
            "SELECT kind, queue, max_attempts FROM metadata.river_job WHERE kind <> 'send_email'"
        ).fetchall() == [("create_payment_intent", "payments", 5)]
        assert conn.execute("SELECT name FROM metadata.river_queue ORDER BY name").fetchall() == [
            ("default",),
            ("payments",),
        ]

    # And again, now that River's tables were there before this deploy too.
    sqitch_ok("revert", db, "-y")
    with connect(db) as conn:
        assert metadata_tables(conn) == tables


@pytest.mark.parametrize(
    "migration",
    [
        "INSERT INTO metadata.river_migration (line, version) VALUES ('workflow', 1)",
        "INSERT INTO metadata.river_migration (line, version) VALUES ('main', 7)",
    ],
    ids=["another-line", "main-above-6"],
)
def test_revert_keeps_tables_river_has_migrated_whatever_the_marker_says(
    empty_database: MakeDatabase, migration: str
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db)
    with connect(db) as conn:
        conn.execute(migration)
        tables = metadata_tables(conn)
        marker = conn.execute(
            "SELECT obj_description('metadata.river_job'::regclass, 'pg_class')"
        ).fetchone()
        assert marker == ("created by payment-worker (sqitch change river_schema)",)

    sqitch_ok("revert", db, "-y")

    with connect(db) as conn:
        assert schemas(conn) == {"metadata"}
        assert metadata_tables(conn) == tables


def privileges_and_policies(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    """What worker_api changes and its revert must restore: grants on our schemas, tables,
    columns and functions, the row-level security policies, and every function's text."""
    ours = "('payments', 'metadata')"
    return {
        "schemas": conn.execute(
            f"SELECT nspname, nspacl::text FROM pg_namespace WHERE nspname IN {ours} ORDER BY 1"
        ).fetchall(),
        "relations": conn.execute(
            "SELECT c.oid::regclass::text, c.relacl::text, c.relrowsecurity FROM pg_class c"
            f" WHERE c.relnamespace::regnamespace::text IN {ours} ORDER BY 1"
        ).fetchall(),
        "columns": conn.execute(
            "SELECT a.attrelid::regclass::text, a.attname, a.attacl::text FROM pg_attribute a"
            " JOIN pg_class c ON c.oid = a.attrelid"
            f" WHERE c.relnamespace::regnamespace::text IN {ours} AND a.attnum > 0"
            " AND NOT a.attisdropped ORDER BY 1, 2"
        ).fetchall(),
        "policies": conn.execute(
            "SELECT polrelid::regclass::text, polname, polcmd, polroles::regrole[]::text,"
            " pg_get_expr(polqual, polrelid), pg_get_expr(polwithcheck, polrelid)"
            " FROM pg_policy ORDER BY 1, 2"
        ).fetchall(),
        "functions": conn.execute(
            "SELECT p.oid::regprocedure::text, p.proacl::text, pg_get_functiondef(p.oid)"
            " FROM pg_proc p"
            f" WHERE p.pronamespace::regnamespace::text IN {ours} AND p.prokind = 'f' ORDER BY 1"
        ).fetchall(),
    }


def test_worker_api_reverts_to_exactly_what_was_there(empty_database: MakeDatabase) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", "worker_api^")
    with connect(db) as conn:
        before = privileges_and_policies(conn)
        assert (
            "payments.river_job_clean(text,timestamp with time zone,timestamp with time zone"
            ",integer)"
        ) in [f[0] for f in before["functions"]]

    sqitch_ok("deploy", db)
    with connect(db) as conn:
        deployed = privileges_and_policies(conn)
        assert deployed != before
        # payment_worker keeps no table privilege and no policy of its own.
        assert (
            conn.execute(
                "SELECT c.oid::regclass::text FROM pg_class c"
                " WHERE c.relnamespace::regnamespace::text IN ('payments', 'metadata')"
                "  AND c.relkind IN ('r', 'v', 'S')"
                "  AND (has_table_privilege('payment_worker', c.oid,"
                "                           'SELECT, INSERT, UPDATE, DELETE')"
                "       OR has_any_column_privilege('payment_worker', c.oid, 'SELECT, UPDATE'))"
            ).fetchall()
            == []
        )
        assert (
            conn.execute(
                "SELECT polname FROM pg_policy WHERE 'payment_worker'::regrole = ANY(polroles)"
            ).fetchall()
            == []
        )

    sqitch_ok("revert", db, "-y", "--to", "worker_api^")
    with connect(db) as conn:
        assert privileges_and_policies(conn) == before

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert privileges_and_policies(conn) == deployed


def lifecycle_catalog(conn: psycopg.Connection) -> dict[str, object]:
    """What payment_lifecycle changes beyond privileges and functions: constraints,
    triggers, indexes and the registered kinds."""
    return {
        **privileges_and_policies(conn),
        "constraints": conn.execute(
            "SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)"
            " FROM pg_constraint WHERE connamespace = 'payments'::regnamespace ORDER BY 1, 2"
        ).fetchall(),
        "triggers": conn.execute(
            "SELECT tgrelid::regclass::text, tgname, tgenabled, pg_get_triggerdef(oid)"
            " FROM pg_trigger WHERE NOT tgisinternal ORDER BY 1, 2"
        ).fetchall(),
        "indexes": conn.execute(
            "SELECT indexrelid::regclass::text, pg_get_indexdef(indexrelid) FROM pg_index"
            " JOIN pg_class c ON c.oid = indrelid"
            " WHERE c.relnamespace IN ('payments'::regnamespace, 'metadata'::regnamespace)"
            " ORDER BY 1"
        ).fetchall(),
        "kinds": conn.execute("SELECT * FROM payments.job_kind ORDER BY 1").fetchall(),
        "comments": conn.execute(
            "SELECT obj_description('public.get_payment(uuid)'::regprocedure, 'pg_proc')"
        ).fetchall(),
    }


def test_payment_lifecycle_reverts_to_exactly_what_was_there(
    empty_database: MakeDatabase,
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", "payment_lifecycle^")
    with connect(db) as conn:
        before = lifecycle_catalog(conn)
        conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")

    sqitch_ok("deploy", db)
    with connect(db) as conn:
        deployed = lifecycle_catalog(conn)
        assert deployed != before
        # A payment moved on to a status the old schema does not know, and a sync job.
        conn.execute(
            "UPDATE payments.transactions SET status = 'requires_capture',"
            " provider_status = 'requires_capture', provider_payment_id = 'pi_1',"
            " provider_client_secret = 'pi_1_secret_x'"
        )
        assert conn.execute("SELECT payments.resync(id) FROM payments.transactions").fetchone() == (
            True,
        )

    sqitch_ok("revert", db, "-y", "--to", "payment_lifecycle^")
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == before
        assert conn.execute("SELECT status FROM payments.transactions").fetchall() == [("pending",)]
        assert conn.execute(
            "SELECT count(*) FROM metadata.river_job WHERE kind = 'sync_payment'"
        ).fetchone() == (0,)

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == deployed


def test_backfill_cursor_reverts_to_exactly_what_was_there(empty_database: MakeDatabase) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", "backfill_cursor^")
    with connect(db) as conn:
        before = lifecycle_catalog(conn)

    sqitch_ok("deploy", db)
    with connect(db) as conn:
        deployed = lifecycle_catalog(conn)
        assert deployed != before
        # A saved position, as a leader leaves it: the revert drops it with its table.
        conn.execute(
            "INSERT INTO payments.backfill_cursor"
            " (queue, covered_at, resume_created_gte, resume_starting_after, resume_started_at,"
            "  updated_at, updated_by)"
            " VALUES ('payments', now(), 1, 'evt_1', now(), now(), 'host:1')"
        )

    sqitch_ok("revert", db, "-y", "--to", "backfill_cursor^")
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == before
        assert conn.execute("SELECT to_regclass('payments.backfill_cursor')").fetchone() == (None,)

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == deployed
        assert conn.execute("SELECT count(*) FROM payments.backfill_cursor").fetchone() == (0,)


def test_payment_operations_reverts_to_exactly_what_was_there(
    empty_database: MakeDatabase,
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", "payment_operations^")
    with connect(db) as conn:
        before = lifecycle_catalog(conn)

    sqitch_ok("deploy", db)
    with connect(db) as conn:
        deployed = lifecycle_catalog(conn)
        assert deployed != before
        # A manual payment with a capture waiting and a refunded one: the revert takes
        # their requests, refunds and jobs away with the tables.
        conn.execute(
            "INSERT INTO payments.transactions (id, owner_role, amount, currency, capture_method)"
            " VALUES ('00000000-0000-0000-0000-000000000001', 'x', 2500, 'USD', 'manual')"
        )
        conn.execute(
            "INSERT INTO payments.payment_operations (id, payment_id, operation, requested_role)"
            " VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001', 'capture', 'x')"
        )
        conn.execute(
            "INSERT INTO payments.refunds (id, payment_id, amount, currency, source,"
            " requested_role) VALUES (gen_random_uuid(), '00000000-0000-0000-0000-000000000001',"
            " 100, 'USD', 'rpc', 'x')"
        )
        kinds = conn.execute("SELECT kind FROM metadata.river_job ORDER BY id").fetchall()
        assert kinds == [("create_payment_intent",), ("capture_payment",), ("create_refund",)]

    sqitch_ok("revert", db, "-y", "--to", "payment_operations^")
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == before
        assert conn.execute("SELECT kind FROM metadata.river_job").fetchall() == [
            ("create_payment_intent",)
        ]

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == deployed


@pytest.mark.parametrize(
    "change",
    [
        "operation_given_up_resync",
        "refund_take_back_same_amount",
        "refund_client_columns",
        "refund_taken_back_as_stripes",
    ],
)
def test_a_change_that_replaces_functions_reverts_to_exactly_what_was_there(
    empty_database: MakeDatabase, change: str
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", f"{change}^")
    with connect(db) as conn:
        before = lifecycle_catalog(conn)

    sqitch_ok("deploy", db, "--to", change)
    with connect(db) as conn:
        deployed = lifecycle_catalog(conn)
        assert deployed != before

    sqitch_ok("revert", db, "-y", "--to", f"{change}^")
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == before

    sqitch_ok("deploy", db, "--to", change)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == deployed


def test_client_cancel_unpaid_reverts_to_exactly_what_was_there(
    empty_database: MakeDatabase,
) -> None:
    db = empty_database()
    sqitch_ok("deploy", db, "--to", "client_cancel_unpaid^")
    with connect(db) as conn:
        before = lifecycle_catalog(conn)

    sqitch_ok("deploy", db)
    with connect(db) as conn:
        deployed = lifecycle_catalog(conn)
        assert deployed != before
        # A client's cancel, recorded as the loopback now records it: it stays, without
        # the column.
        conn.execute(
            "INSERT INTO payments.transactions (id, owner_role, amount, currency)"
            " VALUES ('00000000-0000-0000-0000-000000000001', 'x', 2500, 'USD')"
        )
        conn.execute(
            "INSERT INTO payments.payment_operations (id, payment_id, operation, requested_role,"
            " requested_by_operator) VALUES ('00000000-0000-0000-0000-000000000002',"
            " '00000000-0000-0000-0000-000000000001', 'cancel', 'x', false)"
        )

    sqitch_ok("revert", db, "-y", "--to", "client_cancel_unpaid^")
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == before
        assert conn.execute(
            "SELECT operation, status FROM payments.payment_operations"
        ).fetchall() == [("cancel", "requested")]

    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)
    with connect(db) as conn:
        assert lifecycle_catalog(conn) == deployed
        assert conn.execute(
            "SELECT requested_by_operator FROM payments.payment_operations"
        ).fetchall() == [(None,)]
