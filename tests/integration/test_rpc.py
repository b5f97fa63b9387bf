"""create_payment_intent_sync and get_payment against a real worker and the stand-in."""

from __future__ import annotations

import json
from decimal import Decimal
from uuid import UUID

import psycopg
import pytest

from stripe_standin.client import card_declined, scripted_error
from stripe_standin.process import StandinProcess
from tests import pg
from tests.integration.conftest import RunningWorker

RPC = "SELECT create_payment_intent_sync(%s, %s)"


def payment_count(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM payments.transactions").fetchone()
    assert row is not None
    return int(row[0])


def test_returns_the_payment_intent_as_json(
    conn: psycopg.Connection, running_worker: RunningWorker, standin: StandinProcess
) -> None:
    row = conn.execute(RPC, (2500, "Test payment $25.00")).fetchone()
    assert row is not None
    result = row[0]
    assert set(result) == {
        "payment_id",
        "client_secret",
        "amount",
        "currency",
        "status",
        "description",
    }
    assert result["amount"] == Decimal("25.00")
    assert result["currency"] == "USD"
    assert result["status"] == "pending"
    assert result["description"] == "Test payment $25.00"
    assert result["client_secret"].startswith("pi_")
    intents = standin.admin.intents_with_metadata("payment_id", result["payment_id"])
    assert len(intents) == 1
    assert intents[0]["amount"] == 2500
    assert intents[0]["currency"] == "usd"
    assert intents[0]["client_secret"] == result["client_secret"]
    job = conn.execute(
        "SELECT state, attempt, attempted_by FROM metadata.river_job"
        " WHERE args->>'payment_id' = %s",
        (result["payment_id"],),
    ).fetchone()
    assert job == ("completed", 1, ["test-worker"])


def test_amount_keeps_two_decimals_in_the_json_text(
    conn: psycopg.Connection, running_worker: RunningWorker
) -> None:
    row = conn.execute("SELECT create_payment_intent_sync(2500, 'x')::text").fetchone()
    assert row is not None
    assert '"amount": 25.00' in row[0]
    assert json.loads(row[0], parse_float=Decimal)["amount"] == Decimal("25.00")


def test_works_inside_an_explicit_transaction_at_each_isolation_level(
    database_url: str, running_worker: RunningWorker
) -> None:
    for level in ("READ COMMITTED", "REPEATABLE READ", "SERIALIZABLE"):
        with psycopg.connect(database_url) as tx_conn:
            pg.money_as_decimal(tx_conn)
            tx_conn.execute(f"SET TRANSACTION ISOLATION LEVEL {level}")
            tx_conn.execute("SELECT 1")  # the snapshot is taken before the RPC
            row = tx_conn.execute(RPC, (1234, level)).fetchone()
            tx_conn.commit()
        assert row is not None
        assert row[0]["status"] == "pending", level
        assert row[0]["amount"] == Decimal("12.34")


@pytest.mark.parametrize(
    ("amount", "description", "error", "message"),
    [
        (0, "x", "InvalidParameterValue", "must be between 50 and 99999999 for USD, got 0"),
        (-100, "x", "InvalidParameterValue", "must be between 50 and 99999999 for USD, got -100"),
        (49, "x", "InvalidParameterValue", "must be between 50 and 99999999 for USD, got 49"),
        (10**8, "x", "InvalidParameterValue", "between 50 and 99999999 for USD, got 100000000"),
        (None, "x", "NullValueNotAllowed", "amount_cents is required"),
        (Decimal("25.5"), "x", "InvalidParameterValue", "must be a whole number of minor units"),
        (2500, "d" * 1001, "StringDataRightTruncation", "at most 1000 characters, got 1001"),
    ],
)
def test_bad_input_is_refused_and_records_nothing(
    conn: psycopg.Connection, amount: object, description: str, error: str, message: str
) -> None:
    with pytest.raises(getattr(psycopg.errors, error)) as err:
        conn.execute(RPC, (amount, description))
    assert message in str(err.value)
    assert payment_count(conn) == 0
    row = conn.execute("SELECT count(*) FROM metadata.river_job").fetchone()
    assert row == (0,)


def test_limits_are_accepted(conn: psycopg.Connection, running_worker: RunningWorker) -> None:
    for amount, description in ((50, None), (99999999, "d" * 1000)):
        row = conn.execute(RPC, (amount, description)).fetchone()
        assert row is not None
        assert row[0]["status"] == "pending"
    assert payment_count(conn) == 2


def test_timeout_names_the_payment_and_keeps_it(conn: psycopg.Connection) -> None:
    conn.execute("SET payments.sync_timeout = '150 milliseconds'")
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(RPC, (2500, "no worker running"))
    row = conn.execute("SELECT id, status FROM payments.transactions").fetchone()
    assert row is not None
    payment_id, status = row
    assert status == "pending_intent"
    assert f"payment {payment_id} has no PaymentIntent yet" in str(err.value)
    assert err.value.diag.message_hint is not None
    assert f"get_payment('{payment_id}')" in err.value.diag.message_hint
    job = conn.execute("SELECT state FROM metadata.river_job").fetchone()
    assert job == ("available",)


def test_payment_left_by_a_timeout_is_processed_later(
    conn: psycopg.Connection,
    database_url: str,
    standin: StandinProcess,
    request: pytest.FixtureRequest,
) -> None:
    conn.execute("SET payments.sync_timeout = '100 milliseconds'")
    with pytest.raises(psycopg.errors.RaiseException):
        conn.execute(RPC, (2500, "later"))
    row = conn.execute("SELECT id FROM payments.transactions").fetchone()
    assert row is not None
    payment_id = row[0]
    running: RunningWorker = request.getfixturevalue("running_worker")
    assert running.worker.producer.drain(5)
    # The worker's start-up claim finds the job inserted while none listened.
    for _ in range(200):
        got = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
        assert got is not None
        if got[0]["status"] == "pending":
            break
        running.worker.stop.wait(0.01)
    assert got[0]["status"] == "pending"
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1


def test_permanent_stripe_failure_raises_stripes_message(
    conn: psycopg.Connection, running_worker: RunningWorker, standin: StandinProcess
) -> None:
    standin.admin.script([card_declined()])
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(RPC, (2500, "declined"))
    assert str(err.value).startswith("Payment intent creation failed: Your card was declined.")
    row = conn.execute("SELECT status, error_message FROM payments.transactions").fetchone()
    assert row == ("failed", "Your card was declined.")
    job = conn.execute("SELECT state, attempt FROM metadata.river_job").fetchone()
    assert job == ("discarded", 1)


def test_a_wrong_api_key_is_not_the_callers_to_read(
    conn: psycopg.Connection, running_worker: RunningWorker, standin: StandinProcess
) -> None:
    standin.admin.script(
        [scripted_error(401, "invalid_request_error", "Invalid API Key provided: sk_test_****9999")]
    )
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(RPC, (2500, "wrong key"))
    row = conn.execute("SELECT id, status FROM payments.transactions").fetchone()
    assert row is not None and row[1] == "failed"
    raised = str(err.value).splitlines()[0]
    assert raised == (
        f"Payment intent creation failed: the payment could not be created (payment {row[0]});"
        " the operator has the details"
    )
    for internal in ("Invalid API Key", "sk_test_", "9999"):
        assert internal not in str(err.value)


def test_loopback_failure_is_a_clear_error_and_records_nothing(conn: psycopg.Connection) -> None:
    conn.execute("UPDATE payments.loopback SET host = '127.0.0.1', port = 1")
    with pytest.raises(psycopg.errors.SqlclientUnableToEstablishSqlconnection) as err:
        conn.execute(RPC, (2500, "x"))
    assert "cannot record the payment: the loopback connection failed" in str(err.value)
    assert err.value.diag.message_hint is not None
    assert "payments.loopback" in err.value.diag.message_hint
    assert payment_count(conn) == 0


def test_loopback_password_never_appears_in_the_error(conn: psycopg.Connection) -> None:
    row = conn.execute("SELECT password FROM payments.loopback").fetchone()
    assert row is not None
    (password,) = row
    assert len(password) >= 32
    conn.execute("UPDATE payments.loopback SET host = '127.0.0.1', port = 1")
    with pytest.raises(psycopg.Error) as err:
        conn.execute(RPC, (2500, "x"))
    for text in (str(err.value), err.value.diag.message_detail, err.value.diag.message_hint):
        assert password not in (text or "")


def test_get_payment_shows_only_the_callers_own(
    conn: psycopg.Connection, running_worker: RunningWorker
) -> None:
    # This session's login acts as PostgREST's authenticator: its JWT claims count.
    conn.execute("UPDATE payments.config SET authenticator_roles = ARRAY[session_user::text]")
    conn.execute("""SELECT set_config('request.jwt.claims', '{"sub": "alice"}', false)""")
    row = conn.execute(RPC, (2500, "alice's")).fetchone()
    assert row is not None
    payment_id = UUID(row[0]["payment_id"])
    owner = conn.execute(
        "SELECT owner_role = session_user, user_id FROM payments.transactions"
    ).fetchone()
    assert owner == (True, "alice")
    mine = conn.execute("SELECT get_payment(%s)->>'status'", (payment_id,)).fetchone()
    assert mine == ("pending",)
    conn.execute("""SELECT set_config('request.jwt.claims', '{"sub": "mallory"}', false)""")
    assert conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone() == (None,)
