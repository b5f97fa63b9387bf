"""The deploy refuses a database where the security model cannot hold, and verify notices
when one is changed that way afterwards: dblink executable by PUBLIC (wherever dblink lives),
PUBLIC allowed to CREATE in schema public. Real sqitch, each test on its own database."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests import pg
from tests.schema.test_sqitch import MakeDatabase, connect, empty_database, schemas, sqitch_ok

__all__ = ["empty_database"]  # the fixture, used by name

REVOKE_DBLINK = """
DO $$
DECLARE f regprocedure;
BEGIN
    FOR f IN SELECT objid::regprocedure FROM pg_depend
             WHERE refobjid = (SELECT oid FROM pg_extension WHERE extname = 'dblink')
               AND classid = 'pg_proc'::regclass
    LOOP
        EXECUTE format('REVOKE EXECUTE ON FUNCTION %s FROM PUBLIC', f);
    END LOOP;
END
$$
"""


def deploy_fails(db: str) -> str:
    result = pg.sqitch("deploy", db, check=False)
    assert result.returncode != 0, f"deploy succeeded:\n{result.stdout}"
    return result.stdout + result.stderr


def verify_fails(db: str) -> None:
    result = pg.sqitch("verify", db, check=False)
    assert result.returncode != 0, f"verify passed:\n{result.stdout}"
    assert "loopback_writer" in result.stdout + result.stderr


@pytest.fixture
def login(empty_database: MakeDatabase) -> Iterator[tuple[str, str]]:
    """(database, a login in payment_client there), for the hijack through a public dblink."""
    db = empty_database()
    name = f"pw_preflight_{db[-12:]}"
    with connect("postgres") as admin:
        admin.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(name)))
    yield db, name
    with connect("postgres") as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(db)))
        admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def test_deploy_refuses_dblink_executable_by_public_in_schema_public(
    login: tuple[str, str],
) -> None:
    db, client = login
    with connect(db) as admin:
        admin.execute("CREATE EXTENSION dblink SCHEMA public")

    output = deploy_fails(db)

    assert "dblink's functions (schema public) are executable by PUBLIC" in output
    with connect(db) as admin:
        # The failed deploy took everything it had deployed back.
        assert schemas(admin) == set()
        admin.execute(REVOKE_DBLINK)
    sqitch_ok("deploy", db)
    sqitch_ok("verify", db)

    # The attack of the audit, as it was run: a client login that can reach dblink
    # (granted here by hand, since PUBLIC no longer can) makes one RPC call, then sends
    # the loopback connection left in its session a statement of its own.
    with connect(db) as admin:
        admin.execute(sql.SQL("GRANT payment_client TO {}").format(sql.Identifier(client)))
        admin.execute(
            sql.SQL("GRANT EXECUTE ON FUNCTION public.dblink_exec(text, text) TO {}").format(
                sql.Identifier(client)
            )
        )
    with psycopg.connect(pg.url(db, user=client), autocommit=True) as session:
        session.execute("SET payments.sync_timeout = '50 ms'")
        with pytest.raises(psycopg.errors.RaiseException, match="no PaymentIntent yet"):
            session.execute("SELECT create_payment_intent_sync(2500, 'opens the loopback')")
        hijack = sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(client))
        with pytest.raises(psycopg.Error, match="must be superuser"):
            session.execute(
                "SELECT dblink_exec('payment_worker_loopback', %s)",
                (hijack.as_string(session),),
            )
    with connect(db) as admin:
        superuser = admin.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (client,))
        assert superuser.fetchone() == (False,)
        admin.execute(
            sql.SQL("REVOKE ALL ON FUNCTION public.dblink_exec(text, text) FROM {}").format(
                sql.Identifier(client)
            )
        )
        admin.execute(sql.SQL("REVOKE payment_client FROM {}").format(sql.Identifier(client)))

    # Granting PUBLIC one of dblink's functions again after the deploy: verify fails.
    with connect(db) as admin:
        admin.execute("GRANT EXECUTE ON FUNCTION public.dblink_exec(text, text) TO PUBLIC")
    verify_fails(db)
    sqitch_ok("revert", db, "-y")


def test_deploy_refuses_public_create_on_schema_public(empty_database: MakeDatabase) -> None:
    db = empty_database()
    with connect(db) as admin:
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")

    output = deploy_fails(db)

    assert "PUBLIC may CREATE in schema public" in output
    assert "REVOKE CREATE ON SCHEMA public FROM PUBLIC" in output
    with connect(db) as admin:
        assert schemas(admin) == set()
        admin.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
    sqitch_ok("deploy", db)
    with connect(db) as admin:
        admin.execute("GRANT CREATE ON SCHEMA public TO PUBLIC")
    verify_fails(db)
    sqitch_ok("revert", db, "-y")


def test_revert_drops_the_loopback_login_it_created(empty_database: MakeDatabase) -> None:
    db = empty_database()
    sqitch_ok("deploy", db)
    with connect(db) as admin:
        row = admin.execute("SELECT role_name, role_created FROM payments.loopback").fetchone()
    assert row == (f"payments_writer_{db}", True)
    sqitch_ok("revert", db, "-y")
    with connect("postgres") as admin:
        left = admin.execute("SELECT count(*) FROM pg_roles WHERE rolname = %s", (row[0],))
        assert left.fetchone() == (0,)
