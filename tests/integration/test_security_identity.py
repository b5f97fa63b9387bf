"""Who owns a payment: identities from what a caller cannot forge (README: "Security model").

JWT claims count only on a session whose login is a configured PostgREST authenticator;
any other login owns what it creates itself; a caller without an identity reads nothing."""

from __future__ import annotations

import json
from uuid import UUID

import psycopg
import pytest
from psycopg import sql

from tests.integration.conftest import MakeRole, RunningWorker, connect_as
from tests.integration.rows import insert_payment

RPC = "SELECT create_payment_intent_sync(%s, %s)"


def claims(conn: psycopg.Connection, sub: str | None) -> None:
    """What PostgREST does per request: request.jwt.claims, local to the transaction."""
    value = "" if sub is None else json.dumps({"sub": sub, "role": "payment_client"})
    conn.execute("SELECT set_config('request.jwt.claims', %s, false)", (value,))


def visible_ids(conn: psycopg.Connection) -> set[UUID]:
    return {row[0] for row in conn.execute("SELECT id FROM payments.transactions")}


def get_payment(conn: psycopg.Connection, payment_id: UUID) -> object:
    row = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def authenticator(conn: psycopg.Connection, login_role: MakeRole) -> str:
    """A login configured as PostgREST's authenticator, granted payment_client."""
    name = login_role("payment_client")
    conn.execute("UPDATE payments.config SET authenticator_roles = ARRAY[%s]", (name,))
    return name


def test_forged_claims_from_a_direct_login_are_ignored(
    conn: psycopg.Connection,
    database_url: str,
    login_role: MakeRole,
    authenticator: str,
    running_worker: RunningWorker,
) -> None:
    alice = insert_payment(conn, owner_role=authenticator, user_id="alice")
    mallory = login_role("payment_client")
    with connect_as(database_url, mallory) as forger:
        # Both the claims PostgREST sets and the legacy per-claim setting.
        claims(forger, "alice")
        forger.execute("SELECT set_config('request.jwt.claim.sub', 'alice', false)")

        assert get_payment(forger, alice) is None
        assert visible_ids(forger) == set()

        row = forger.execute(RPC, (2500, "forged")).fetchone()
        assert row is not None
        created = UUID(row[0]["payment_id"])
        assert visible_ids(forger) == {created}
        assert get_payment(forger, created) is not None
    owner = conn.execute(
        "SELECT owner_role, user_id FROM payments.transactions WHERE id = %s", (created,)
    ).fetchone()
    assert owner == (mallory, None)


def test_the_authenticators_claims_name_the_owner(
    conn: psycopg.Connection, database_url: str, authenticator: str, running_worker: RunningWorker
) -> None:
    bob = insert_payment(conn, owner_role=authenticator, user_id="bob")
    with connect_as(database_url, authenticator) as api:
        claims(api, "alice")
        row = api.execute(RPC, (2500, "alice's")).fetchone()
        assert row is not None
        mine = UUID(row[0]["payment_id"])
        assert visible_ids(api) == {mine}
        assert get_payment(api, bob) is None

        claims(api, "bob")
        assert visible_ids(api) == {bob}
        assert get_payment(api, mine) is None
    owner = conn.execute(
        "SELECT owner_role, user_id FROM payments.transactions WHERE id = %s", (mine,)
    ).fetchone()
    assert owner == (authenticator, "alice")


def test_a_sub_equal_to_a_login_name_is_not_that_login(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, authenticator: str
) -> None:
    direct = login_role("payment_client")
    theirs = insert_payment(conn, owner_role=direct, user_id=None)
    with connect_as(database_url, authenticator) as api:
        claims(api, direct)
        assert get_payment(api, theirs) is None
        assert visible_ids(api) == set()


def test_an_authenticator_without_a_sub_has_no_identity(
    conn: psycopg.Connection, database_url: str, authenticator: str
) -> None:
    # The old shared NULL owner: payments made by callers without a sub.
    unowned = insert_payment(conn, owner_role=None, user_id=None)
    with connect_as(database_url, authenticator) as anonymous:
        for sub in (None, ""):
            claims(anonymous, sub)
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="no caller identity"):
                anonymous.execute(RPC, (2500, "anonymous"))
            assert get_payment(anonymous, unowned) is None
            assert visible_ids(anonymous) == set()
    assert conn.execute("SELECT count(*) FROM payments.transactions").fetchone() == (1,)


def test_direct_logins_without_a_sub_do_not_share_an_owner(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, running_worker: RunningWorker
) -> None:
    made: dict[str, UUID] = {}
    logins = [login_role("payment_client") for _ in range(2)]
    for name in logins:
        with connect_as(database_url, name) as client:
            row = client.execute(RPC, (2500, name)).fetchone()
            assert row is not None
            made[name] = UUID(row[0]["payment_id"])
    unowned = insert_payment(conn, owner_role=None, user_id=None)
    for name in logins:
        other = next(p for n, p in made.items() if n != name)
        with connect_as(database_url, name) as client:
            assert visible_ids(client) == {made[name]}
            assert get_payment(client, other) is None
            assert get_payment(client, unowned) is None


def test_a_sub_is_stored_as_text_not_run(
    conn: psycopg.Connection, database_url: str, authenticator: str, running_worker: RunningWorker
) -> None:
    hostile = "x'); DELETE FROM payments.transactions; --"
    insert_payment(conn, owner_role=authenticator, user_id="someone else")
    with connect_as(database_url, authenticator) as api:
        claims(api, hostile)
        row = api.execute(RPC, (2500, "quoted")).fetchone()
        assert row is not None
    rows = conn.execute("SELECT user_id FROM payments.transactions ORDER BY created_at").fetchall()
    assert rows == [("someone else",), (hostile,)]


def test_owner_and_client_secret_never_change(conn: psycopg.Connection) -> None:
    payment_id = insert_payment(conn, owner_role="someone", user_id="alice")
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_1',"
        " provider_client_secret = 'pi_1_secret_first' WHERE id = %s",
        (payment_id,),
    )
    for change, message in (
        ("owner_role = 'mallory'", "owner"),
        ("provider_client_secret = 'pi_1_secret_swapped'", "client secret cannot change"),
        ("provider_client_secret = NULL", "client secret cannot change"),
    ):
        with pytest.raises(psycopg.errors.RaiseException, match=message) as err:
            conn.execute(
                sql.SQL("UPDATE payments.transactions SET {} WHERE id = %s").format(
                    sql.SQL(change)
                ),
                (payment_id,),
            )
        assert "pi_1_secret" not in str(err.value)
    row = conn.execute(
        "SELECT owner_role, provider_client_secret FROM payments.transactions WHERE id = %s",
        (payment_id,),
    ).fetchone()
    assert row == ("someone", "pi_1_secret_first")
