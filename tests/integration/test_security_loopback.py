"""The RPC's loopback connection: a least-privilege login that a caller who reaches it can do
nothing with, and the caps on what a caller controls (README: "Security model")."""

from __future__ import annotations

import time
from collections.abc import Iterator
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql

from tests.integration.conftest import MakeRole, RunningWorker, connect_as

RPC = "SELECT create_payment_intent_sync(%s, %s)"
LOOPBACK = "payment_worker_loopback"


def writer_role(conn: psycopg.Connection) -> str:
    row = conn.execute("SELECT role_name FROM payments.loopback").fetchone()
    assert row is not None
    return str(row[0])


def loopback_users(conn: psycopg.Connection) -> list[str]:
    return [
        row[0]
        for row in conn.execute(
            "SELECT usename FROM pg_stat_activity"
            " WHERE application_name = %s AND datname = current_database()",
            (LOOPBACK,),
        )
    ]


def snapshot(conn: psycopg.Connection) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM payments.transactions),"
        " (SELECT count(*) FROM metadata.river_job),"
        " (SELECT array_agg(rolname ORDER BY rolname) FROM pg_roles WHERE rolsuper)"
    ).fetchone()
    assert row is not None
    return tuple(row)


def record_once(client: psycopg.Connection) -> None:
    """One RPC call with no worker: it records the payment, opens the loopback, times out."""
    client.execute("SET payments.sync_timeout = '50 ms'")
    with pytest.raises(psycopg.errors.RaiseException, match="has no PaymentIntent yet"):
        client.execute(RPC, (2500, "opens the loopback"))


def test_the_loopback_is_a_limited_login_not_a_superuser(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole
) -> None:
    role = writer_role(conn)
    with connect_as(database_url, login_role("payment_client")) as client:
        record_once(client)
        assert loopback_users(conn) == [role]
    attributes = conn.execute(
        "SELECT rolsuper, rolcreaterole, rolcreatedb, rolbypassrls, rolreplication,"
        " rolinherit, rolconnlimit, rolconfig FROM pg_roles WHERE rolname = %s",
        (role,),
    ).fetchone()
    assert attributes is not None
    assert attributes[:7] == (False, False, False, False, False, False, 20)
    assert {"idle_session_timeout=60s", "statement_timeout=10s"} <= set(attributes[7])
    groups = conn.execute(
        "SELECT count(*) FROM pg_auth_members WHERE member = %s::regrole", (role,)
    ).fetchone()
    assert groups == (0,)


@pytest.fixture
def attacker(conn: psycopg.Connection, login_role: MakeRole) -> Iterator[str]:
    """A payment_client login that may execute dblink's functions too: the misconfiguration
    the attack needs, which the deploy refuses for PUBLIC but cannot see for one role."""
    me = login_role("payment_client")
    grant = "GRANT EXECUTE ON ALL FUNCTIONS IN SCHEMA payments TO {}"
    conn.execute(sql.SQL(grant).format(sql.Identifier(me)))
    yield me
    revoke = "REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM {}"
    conn.execute(sql.SQL(revoke).format(sql.Identifier(me)))


@pytest.mark.parametrize(
    ("remote", "error"),
    [
        ("ALTER ROLE {me} SUPERUSER", "must be superuser"),
        (
            "INSERT INTO payments.transactions (amount, currency) VALUES (100, 'USD')",
            "permission denied",
        ),
        (
            "UPDATE payments.transactions SET status = 'failed', error_message = 'x'",
            "permission denied",
        ),
        ("SELECT password FROM payments.loopback", "permission denied"),
        (
            "SELECT payments.writer_payment_record('{uuid}', 'victim', 'alice', 100, 'USD', NULL,"
            " repeat('0', 64))",
            "only the payment RPCs",
        ),
        ("SELECT payments.writer_payment_get('{uuid}', NULL)", "only the payment RPCs"),
        (
            'SELECT payments.writer_request(\'["refund", "{uuid}", "{uuid}", 100, null,'
            " \"x\", null, true]', repeat('0', 64))",
            "only the payment RPCs",
        ),
        ("SELECT create_payment_intent_sync(2500, 'as the writer')", "permission denied"),
        (
            "CREATE FUNCTION public.get_payment(uuid) RETURNS jsonb LANGUAGE sql AS 'SELECT NULL'",
            "permission denied",
        ),
    ],
)
def test_a_hijacked_loopback_is_worth_no_more_than_the_rpc(
    conn: psycopg.Connection, database_url: str, attacker: str, remote: str, error: str
) -> None:
    with connect_as(database_url, attacker) as session:
        record_once(session)
        before = snapshot(conn)
        statement = remote.format(me=f'"{attacker}"', uuid=uuid4())
        with pytest.raises(psycopg.Error, match=error):
            session.execute("SELECT payments.dblink_exec(%s, %s)", (LOOPBACK, statement))
    assert snapshot(conn) == before
    superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = %s", (attacker,))
    assert superuser.fetchone() == (False,)


def test_the_writer_login_itself_may_only_call_its_two_functions(
    conn: psycopg.Connection, database_url: str
) -> None:
    role = writer_role(conn)
    before = snapshot(conn)
    with connect_as(database_url, role) as writer:
        for statement in (
            "SELECT * FROM payments.transactions",
            "SELECT * FROM payments.config",
            "SELECT * FROM metadata.river_job",
            "SELECT payments.loopback_ticket('x')",
            "SELECT create_payment_intent_sync(2500, 'x')",
            "SELECT get_payment(gen_random_uuid())",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                writer.execute(statement)
    assert snapshot(conn) == before


def test_a_session_cannot_wait_longer_than_the_cap(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole
) -> None:
    conn.execute("UPDATE payments.config SET max_sync_timeout = '200 ms'")
    with connect_as(database_url, login_role("payment_client")) as client:
        client.execute("SET payments.sync_timeout = '1000 years'")
        with pytest.raises(psycopg.errors.RaiseException) as err:
            client.execute(RPC, (2500, "capped"))
    assert "has no PaymentIntent yet after 00:00:00.2" in str(err.value)


@pytest.mark.parametrize("value", ["bogus", "-5 s", "0"])
def test_a_bad_sync_timeout_is_refused_and_records_nothing(
    conn: psycopg.Connection, value: str
) -> None:
    conn.execute("SELECT set_config('payments.sync_timeout', %s, false)", (value,))
    with pytest.raises(psycopg.errors.InvalidParameterValue, match=r"payments\.sync_timeout"):
        conn.execute(RPC, (2500, "x"))
    assert conn.execute("SELECT count(*) FROM payments.transactions").fetchone() == (0,)


def test_an_idle_loopback_closes_and_the_next_call_reopens_it(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, running_worker: RunningWorker
) -> None:
    role = writer_role(conn)
    conn.execute(
        sql.SQL("ALTER ROLE {} SET idle_session_timeout = '100ms'").format(sql.Identifier(role))
    )
    try:
        with connect_as(database_url, login_role("payment_client")) as client:
            first = client.execute(RPC, (2500, "first")).fetchone()
            assert first is not None
            deadline = time.monotonic() + 10
            while loopback_users(conn) and time.monotonic() < deadline:
                time.sleep(0.02)
            assert loopback_users(conn) == [], "the idle loopback did not close"
            second = client.execute(RPC, (2600, "after the idle timeout")).fetchone()
            assert second is not None
            assert second[0]["status"] == "pending"
    finally:
        conn.execute(
            sql.SQL("ALTER ROLE {} SET idle_session_timeout = '60s'").format(sql.Identifier(role))
        )
    amounts = conn.execute("SELECT amount FROM payments.transactions ORDER BY amount").fetchall()
    assert amounts == [(2500,), (2600,)]


def test_every_function_pins_its_search_path_and_none_is_public(conn: psycopg.Connection) -> None:
    functions = conn.execute(
        "SELECT p.oid::regprocedure::text, p.proconfig, p.prosecdef,"
        " has_function_privilege('public', p.oid, 'EXECUTE')"
        " FROM pg_proc AS p"
        " WHERE (p.pronamespace = 'payments'::regnamespace"
        "        OR (p.pronamespace = 'public'::regnamespace AND p.proname IN ("
        "            'create_payment_intent_sync', 'get_payment', 'capture_payment',"
        "            'cancel_payment', 'refund_payment')))"
        "   AND NOT EXISTS (SELECT 1 FROM pg_depend AS d WHERE d.objid = p.oid"
        "                   AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e')"
    ).fetchall()
    assert len(functions) > 10
    for name, config, _definer, public in functions:
        assert any(c.startswith("search_path=pg_catalog") for c in config or []), name
        assert not public, name
