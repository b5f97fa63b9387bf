"""The security model on a server of its own, configured as production ones are: passwords
required over TCP (scram-sha-256), a small max_connections. Two things the shared test server
cannot show: a deploy by a login that is not a superuser, and connection exhaustion."""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import ExitStack
from urllib.parse import quote

import psycopg
import pytest
from psycopg import sql

from stripe_standin.process import StandinProcess
from tests.chaos.cluster import PrivateCluster, sqitch_deploy
from tests.integration.conftest import worker_running_at

MAX_CONNECTIONS = 30
RESERVED = 3  # superuser_reserved_connections
LOOPBACKS = 3  # the deploy's loopback_connections for the exhaustion test
PASSWORD = "cluster-test-pw-4Rk9"
RPC = "SELECT create_payment_intent_sync(%s, %s)"


@pytest.fixture(scope="module")
def cluster() -> Iterator[PrivateCluster]:
    server = PrivateCluster(
        settings={
            "max_connections": str(MAX_CONNECTIONS),
            "superuser_reserved_connections": str(RESERVED),
            "password_encryption": "scram-sha-256",
        },
        # The administrator over the socket and over TCP without a password; every other
        # login over TCP with one, as dblink requires of a non-superuser's connections.
        hba=[
            "local all all trust",
            "host all postgres 127.0.0.1/32 trust",
            "host all all 127.0.0.1/32 scram-sha-256",
        ],
    ).start()
    yield server
    server.remove()


def url(cluster: PrivateCluster, dbname: str, user: str = "postgres") -> str:
    auth = quote(user) if user == "postgres" else f"{quote(user)}:{quote(PASSWORD)}"
    return f"postgresql://{auth}@127.0.0.1:{cluster.port}/{quote(dbname)}"


def admin(cluster: PrivateCluster, dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(url(cluster, dbname), autocommit=True)


def create_login(cluster: PrivateCluster, name: str, *options: str) -> None:
    with admin(cluster) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} " + " ".join(options)).format(
                sql.Identifier(name), sql.Literal(PASSWORD)
            )
        )


def test_a_deployer_that_is_no_superuser_deploys_and_the_rpc_works(
    cluster: PrivateCluster, standin: StandinProcess
) -> None:
    # What a managed database gives: a login with CREATEROLE owning the database, and an
    # administrator who installed dblink with PUBLIC's EXECUTE revoked.
    create_login(cluster, "deployer", "CREATEROLE IN ROLE pg_read_all_stats")
    with admin(cluster) as conn:
        conn.execute("CREATE DATABASE shop OWNER deployer")
    with admin(cluster, "shop") as conn:
        conn.execute("CREATE SCHEMA ext")
        conn.execute("CREATE EXTENSION dblink SCHEMA ext")
        conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA ext FROM PUBLIC")
        conn.execute("GRANT USAGE ON SCHEMA ext TO deployer")
        conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA ext TO deployer")

    sqitch_deploy(url(cluster, "shop", "deployer"))

    create_login(cluster, "shop_app", "IN ROLE payment_client")
    create_login(cluster, "shop_worker", "IN ROLE payment_worker")
    with admin(cluster, "shop") as conn:
        owner = conn.execute(
            "SELECT r.rolname, r.rolsuper FROM pg_proc AS p JOIN pg_roles AS r"
            " ON r.oid = p.proowner"
            " WHERE p.oid = 'public.create_payment_intent_sync(numeric, text)'::regprocedure"
        ).fetchone()
        assert owner == ("deployer", False)
    with (
        worker_running_at(url(cluster, "shop", "shop_worker"), standin.url),
        psycopg.connect(url(cluster, "shop", "shop_app"), autocommit=True) as client,
    ):
        row = client.execute(RPC, (2500, "deployed without a superuser")).fetchone()
    assert row is not None
    assert row[0]["status"] == "pending"
    assert row[0]["client_secret"].startswith("pi_")
    with admin(cluster, "shop") as conn:
        stored = conn.execute(
            "SELECT owner_role, status FROM payments.transactions WHERE id = %s",
            (row[0]["payment_id"],),
        ).fetchone()
        assert stored == ("shop_app", "pending")


def connected(cluster: PrivateCluster, dbname: str, user: str) -> bool:
    try:
        with psycopg.connect(url(cluster, dbname, user), connect_timeout=5):
            return True
    except psycopg.OperationalError:
        return False


def test_callers_cannot_exhaust_the_server_through_the_loopback(
    cluster: PrivateCluster,
) -> None:
    with admin(cluster) as conn:
        conn.execute("CREATE DATABASE crowded")
    sqitch_deploy(url(cluster, "crowded"), "--set", f"loopback_connections={LOOPBACKS}")
    # The client's own sessions are capped by its login, as the README tells operators to do.
    create_login(cluster, "crowd", "IN ROLE payment_client CONNECTION LIMIT 8")
    create_login(cluster, "crowd_worker", "IN ROLE payment_worker")
    recorded = refused = 0
    with ExitStack() as stack:
        sessions = [
            stack.enter_context(psycopg.connect(url(cluster, "crowded", "crowd"), autocommit=True))
            for _ in range(8)
        ]
        for session in sessions:
            session.execute("SET payments.sync_timeout = '20 ms'")
            try:
                session.execute(RPC, (2500, "crowd"))
            except psycopg.errors.RaiseException as exc:
                assert "has no PaymentIntent yet" in str(exc)
                recorded += 1
            except psycopg.errors.TooManyConnections as exc:
                assert f"all {LOOPBACKS} loopback connections are in use" in str(exc)
                refused += 1
        assert (recorded, refused) == (LOOPBACKS, 8 - LOOPBACKS)

        # Everyone else still gets in while the crowd holds its sessions and loopbacks.
        assert connected(cluster, "crowded", "crowd_worker")
        assert connected(cluster, "crowded", "postgres")

        # Fill every slot left that is not reserved for superusers; the next RPC's loopback
        # finds the server full and fails fast instead of taking a reserved slot.
        create_login(cluster, "filler")
        with admin(cluster, "crowded") as conn:
            # No loopback limit now: what stops the next one is the server being full.
            conn.execute(
                "DO $$ BEGIN EXECUTE format('ALTER ROLE %I CONNECTION LIMIT -1',"
                " (SELECT role_name FROM payments.loopback)); END $$"
            )
        while True:
            try:
                stack.enter_context(
                    psycopg.connect(url(cluster, "crowded", "filler"), connect_timeout=5)
                )
            except psycopg.OperationalError:
                break
        sessions[-1].execute("SET payments.sync_timeout = '20 ms'")
        with pytest.raises(psycopg.errors.TooManyConnections, match="no free connection"):
            sessions[-1].execute(RPC, (2500, "server full"))
        assert connected(cluster, "crowded", "postgres"), "the superuser was locked out"
    with admin(cluster, "crowded") as conn:
        count = conn.execute("SELECT count(*) FROM payments.transactions").fetchone()
        assert count == (LOOPBACKS,)


def test_a_deployer_without_createrole_is_told_what_it_needs(cluster: PrivateCluster) -> None:
    create_login(cluster, "weak_deployer", "IN ROLE pg_read_all_stats")
    with admin(cluster) as conn:
        conn.execute("CREATE DATABASE weak OWNER weak_deployer")
    with admin(cluster, "weak") as conn:
        # Everything an administrator can prepare, except the loopback login's password.
        conn.execute("CREATE EXTENSION dblink SCHEMA public")
        conn.execute("REVOKE EXECUTE ON ALL FUNCTIONS IN SCHEMA public FROM PUBLIC")
        conn.execute("GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA public TO weak_deployer")
        for role in ("payment_client", "payment_worker", "payments_writer_weak"):
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (role,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
    with pytest.raises(RuntimeError) as err:
        sqitch_deploy(url(cluster, "weak", "weak_deployer"))
    output = str(err.value)
    assert "cannot set up the loopback login payments_writer_weak" in output
    assert "The deployer needs CREATEROLE" in output
    assert re.search(r"[0-9a-f]{64}", output) is None, "a generated password was printed"
    assert PASSWORD not in output
    with admin(cluster, "weak") as conn:
        assert conn.execute("SELECT to_regnamespace('payments')").fetchone() == (None,)
