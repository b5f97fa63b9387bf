"""capture_payment, cancel_payment and refund_payment in the database alone (no worker):
every bad argument and wrong state refused with a clear error and nothing recorded, who
may call which, the refund cap under concurrent calls, the wait and its timeout, and what
giving a job up tells the waiting caller. The worker's side: test_operations_flow.py."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest

from tests.integration.conftest import MakeRole, connect_as

CAPTURE = "SELECT capture_payment(%s, %s)"
CANCEL = "SELECT cancel_payment(%s, %s)"
REFUND = "SELECT refund_payment(%s, %s, %s)"
STATUSES = ("pending_intent", "pending", "processing", "requires_capture", "succeeded",
            "canceled", "failed")  # fmt: skip
# Stripe's status behind each of ours, for the rows these tests make.
PROVIDER = {
    "pending": "requires_payment_method",
    "processing": "processing",
    "requires_capture": "requires_capture",
    "succeeded": "succeeded",
    "canceled": "canceled",
}


def make_payment(
    conn: psycopg.Connection,
    status: str,
    *,
    owner_role: str,
    amount: int = 2500,
    amount_received: int | None = None,
    capture_method: str = "automatic",
) -> UUID:
    """A payment moved straight to `status`, as the worker's observations would leave it."""
    payment_id = uuid4()
    conn.execute(
        "INSERT INTO payments.transactions (id, owner_role, amount, currency, capture_method)"
        " VALUES (%s, %s, %s, 'USD', %s)",
        (payment_id, owner_role, amount, capture_method),
    )
    if status == "pending_intent":
        return payment_id
    intent = f"pi_{payment_id.hex[:16]}"
    conn.execute(
        "UPDATE payments.transactions SET status = %s, provider_status = %s,"
        " provider_payment_id = %s, provider_client_secret = %s, error_message = %s,"
        " amount_received = %s, amount_capturable = %s WHERE id = %s",
        (
            status,
            PROVIDER.get(status),
            None if status == "failed" else intent,
            None if status == "failed" else f"{intent}_secret_x",
            "declined" if status == "failed" else None,
            amount_received
            if amount_received is not None
            else (amount if status == "succeeded" else 0),
            amount if status == "requires_capture" else 0,
            payment_id,
        ),
    )
    return payment_id


def recorded(conn: psycopg.Connection) -> tuple[object, ...]:
    """Everything a request would record: operations, refunds, their jobs, the payments."""
    return tuple(
        conn.execute(query).fetchall()
        for query in (
            "SELECT * FROM payments.payment_operations ORDER BY id",
            "SELECT * FROM payments.refunds ORDER BY id",
            "SELECT id, kind, args, state FROM metadata.river_job ORDER BY id",
            "SELECT * FROM payments.transactions ORDER BY id",
        )
    )


@pytest.fixture
def operator(database_url: str, login_role: MakeRole) -> Iterator[psycopg.Connection]:
    """A login granted payment_operator, waiting at most 0.3 s for an answer."""
    with connect_as(database_url, login_role("payment_operator")) as session:
        session.execute("SET payments.sync_timeout = '0.3 s'")
        yield session


@pytest.fixture
def client_login(login_role: MakeRole) -> str:
    return login_role("payment_client")


@pytest.fixture
def client(database_url: str, client_login: str) -> Iterator[psycopg.Connection]:
    with connect_as(database_url, client_login) as session:
        session.execute("SET payments.sync_timeout = '0.3 s'")
        yield session


Refused = Callable[..., None]


@pytest.fixture
def refused(conn: psycopg.Connection) -> Refused:
    """Asserts that `statement` fails with `sqlstate` and a message matching `match`,
    recording nothing."""

    def check(
        session: psycopg.Connection, statement: str, args: tuple[Any, ...], sqlstate: str,
        match: str,
    ) -> None:  # fmt: skip
        before = recorded(conn)
        with pytest.raises(psycopg.Error, match=match) as caught:
            session.execute(statement, args)
        assert caught.value.sqlstate == sqlstate, caught.value
        assert recorded(conn) == before

    return check


# --- bad arguments -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("statement", "args", "sqlstate", "match"),
    [
        (CAPTURE, (None, None), "22004", "payment_id is required"),
        (CANCEL, (None, None), "22004", "payment_id is required"),
        (REFUND, (None, None, None), "22004", "payment_id is required"),
        (CAPTURE, ("unknown", 0), "22023", "between 1 and 99999999, got 0"),
        (CAPTURE, ("unknown", -5), "22023", "between 1 and 99999999, got -5"),
        (CAPTURE, ("unknown", Decimal("12.5")), "22023", "whole number of minor units"),
        (CAPTURE, ("unknown", 100000000), "22023", "between 1 and 99999999"),
        (REFUND, ("unknown", 0, None), "22023", "between 1 and 99999999, got 0"),
        (REFUND, ("unknown", -1, None), "22023", "between 1 and 99999999, got -1"),
        (REFUND, ("unknown", Decimal("0.5"), None), "22023", "whole number of minor units"),
        (REFUND, ("unknown", None, "abandoned"), "22023", "reason must be one of duplicate"),
        (REFUND, ("unknown", None, "because"), "22023", "reason must be one of duplicate"),
        (CANCEL, ("unknown", "because"), "22023", "reason must be one of duplicate"),
        (CANCEL, ("unknown", "expired_uncaptured_charge"), "22023", "reason must be one of"),
    ],
)
def test_bad_arguments_are_refused_before_anything_is_recorded(  # noqa: PLR0917
    conn: psycopg.Connection,
    operator: psycopg.Connection,
    refused: Refused,
    statement: str,
    args: tuple[Any, ...],
    sqlstate: str,
    match: str,
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="someone")
    real = tuple(payment_id if a == "unknown" else a for a in args)
    refused(operator, statement, real, sqlstate, match)


CREATE = "SELECT create_payment_intent_sync(%s, %s, %s)"


@pytest.mark.parametrize(
    ("capture_method", "shown"),
    [
        (None, "NULL"),
        ("", "''"),
        ("bogus", "'bogus'"),
        ("Manual", "'Manual'"),
        (" manual", "' manual'"),
        # Stripe's third value: not one this service makes.
        ("automatic_async", "'automatic_async'"),
    ],
)
def test_create_with_an_unknown_capture_method_is_refused_before_anything_is_recorded(
    conn: psycopg.Connection,
    client: psycopg.Connection,
    refused: Refused,
    capture_method: str | None,
    shown: str,
) -> None:
    # The whole first line: the value quoted as given (or NULL), nothing after it.
    message = f"(?m)^capture_method must be automatic or manual, got {re.escape(shown)}$"
    for session in (client, conn):
        refused(session, CREATE, (2500, "x", capture_method), "22023", message)
    assert conn.execute("SELECT count(*) FROM payments.transactions").fetchone() == (0,)
    assert conn.execute("SELECT count(*) FROM metadata.river_job").fetchone() == (0,)


def test_an_unknown_payment_reads_as_not_found(
    operator: psycopg.Connection, refused: Refused
) -> None:
    unknown = uuid4()
    for statement, args in ((CAPTURE, (unknown, None)), (CANCEL, (unknown, None)),
                            (REFUND, (unknown, None, None))):  # fmt: skip
        refused(operator, statement, args, "22023", f"payment {unknown} does not exist")


def test_amounts_above_what_is_there_are_refused(
    conn: psycopg.Connection, operator: psycopg.Connection, refused: Refused
) -> None:
    authorised = make_payment(conn, "requires_capture", owner_role="x", capture_method="manual")
    refused(operator, CAPTURE, (authorised, 2501), "22023", "more than the 2500 capturable")
    paid = make_payment(conn, "succeeded", owner_role="x", amount_received=2000)
    refused(operator, REFUND, (paid, 2001, None), "22023", "more than the 2000 left to refund")


# --- wrong states --------------------------------------------------------------------------------

ALLOWED = {
    "capture": {"requires_capture"},
    "cancel": {"pending_intent", "pending", "requires_capture"},
    "refund": {"succeeded"},
}
CALLS = {
    "capture": (CAPTURE, lambda p: (p, None)),
    "cancel": (CANCEL, lambda p: (p, None)),
    "refund": (REFUND, lambda p: (p, None, None)),
}


@pytest.mark.parametrize("operation", sorted(ALLOWED))
def test_each_operation_is_refused_from_every_other_state(
    conn: psycopg.Connection, operator: psycopg.Connection, refused: Refused, operation: str
) -> None:
    statement, args = CALLS[operation]
    for status in sorted(set(STATUSES) - ALLOWED[operation]):
        payment_id = make_payment(conn, status, owner_role="x")
        refused(operator, statement, args(payment_id), "55000", f"payment {payment_id} is {status}")


def test_a_second_capture_or_cancel_waits_for_the_first(
    conn: psycopg.Connection, operator: psycopg.Connection, refused: Refused
) -> None:
    payment_id = make_payment(conn, "requires_capture", owner_role="x", capture_method="manual")
    with pytest.raises(psycopg.Error, match="is not answered after") as caught:
        operator.execute(CAPTURE, (payment_id, 1000))
    request = caught.value.diag.message_primary
    assert request is not None
    first = conn.execute("SELECT id FROM payments.payment_operations").fetchone()
    assert first is not None and str(first[0]) in request
    for statement in (CAPTURE, CANCEL):
        refused(operator, statement, (payment_id, None), "55000",
                f"already has a capture in progress \\(request {first[0]}\\)")  # fmt: skip


def test_a_payment_refunded_in_full_says_so(
    conn: psycopg.Connection, operator: psycopg.Connection, refused: Refused
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="x", amount_received=1000)
    with pytest.raises(psycopg.Error, match="is not answered after"):
        operator.execute(REFUND, (payment_id, None, "duplicate"))
    assert conn.execute("SELECT amount, reason, status FROM payments.refunds").fetchall() == [
        (1000, "duplicate", "pending_refund")
    ]
    refused(operator, REFUND, (payment_id, 1, None), "55000", "refunded in full \\(1000 of 1000\\)")


def test_a_failed_refund_frees_its_amount(
    conn: psycopg.Connection, operator: psycopg.Connection
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="x", amount_received=1000)
    with pytest.raises(psycopg.Error, match="is not answered after"):
        operator.execute(REFUND, (payment_id, 600, None))
    conn.execute("UPDATE payments.refunds SET status = 'failed', failure_reason = 'declined'")
    with pytest.raises(psycopg.Error, match="is not answered after"):
        operator.execute(REFUND, (payment_id, 1000, None))
    assert conn.execute(
        "SELECT amount, status FROM payments.refunds ORDER BY created_at"
    ).fetchall() == [
        (600, "failed"),
        (1000, "pending_refund"),
    ]


# --- who may do what -----------------------------------------------------------------------------


def test_a_client_may_neither_capture_nor_refund(
    conn: psycopg.Connection, client: psycopg.Connection, client_login: str, refused: Refused
) -> None:
    authorised = make_payment(conn, "requires_capture", owner_role=client_login)
    paid = make_payment(conn, "succeeded", owner_role=client_login)
    refused(
        client,
        CAPTURE,
        (authorised, None),
        "42501",
        "permission denied for function capture_payment",
    )
    refused(
        client, REFUND, (paid, None, None), "42501", "permission denied for function refund_payment"
    )


def test_a_client_cancels_its_own_unpaid_payment_only(
    conn: psycopg.Connection, client: psycopg.Connection, client_login: str, refused: Refused
) -> None:
    others = make_payment(conn, "pending", owner_role="someone_else")
    refused(
        client,
        CANCEL,
        (others, None),
        "22023",
        f"payment {others} does not exist \\(or is not yours\\)",
    )
    for status in ("requires_capture", "succeeded", "processing"):
        mine = make_payment(conn, status, owner_role=client_login)
        refused(client, CANCEL, (mine, None), "55000", "only while it is unpaid")
    for status in ("pending_intent", "pending"):
        mine = make_payment(conn, status, owner_role=client_login)
        with pytest.raises(psycopg.Error, match="is not answered after"):
            client.execute(CANCEL, (mine, "requested_by_customer"))
        row = conn.execute(
            "SELECT operation, reason, status, requested_role FROM payments.payment_operations"
            " WHERE payment_id = %s",
            (mine,),
        ).fetchone()
        assert row == ("cancel", "requested_by_customer", "requested", client_login)


def test_the_worker_role_calls_none_of_them(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, refused: Refused
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="x")
    with connect_as(database_url, login_role("payment_worker")) as worker:
        for name, statement, args in (
            ("capture_payment", CAPTURE, (payment_id, None)),
            ("cancel_payment", CANCEL, (payment_id, None)),
            ("refund_payment", REFUND, (payment_id, None, None)),
        ):
            refused(worker, statement, args, "42501", f"permission denied for function {name}")
        refused(worker, "SELECT * FROM payments.refunds", (), "42501", "permission denied")


def test_a_superuser_is_an_operator_only_after_set_role(
    conn: psycopg.Connection, refused: Refused
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="someone")
    refused(conn, REFUND, (payment_id, None, None), "42501", "only payment_operator may refund")
    assert conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone() == (None,)
    with conn.transaction():
        conn.execute("SET LOCAL ROLE payment_operator")
        shown = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert shown is not None and shown[0]["payment_id"] == str(payment_id)
    # Not the owner: the client secret stays the owner's.
    assert shown[0]["client_secret"] is None


def test_an_operator_reads_payments_without_secrets_and_every_refund(
    conn: psycopg.Connection, operator: psycopg.Connection, refused: Refused
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="someone")
    with pytest.raises(psycopg.Error, match="is not answered after"):
        operator.execute(REFUND, (payment_id, 100, None))
    assert operator.execute(
        "SELECT id, status, amount_received FROM payments.transactions"
    ).fetchall() == [(payment_id, "succeeded", 2500)]
    assert operator.execute("SELECT payment_id, amount FROM payments.refunds").fetchall() == [
        (payment_id, 100)
    ]
    refused(operator, "SELECT provider_client_secret FROM payments.transactions", (), "42501",
            "permission denied")  # fmt: skip
    refused(operator, "UPDATE payments.refunds SET amount = 1", (), "42501", "permission denied")
    refused(operator, "SELECT payments.writer_request('[]', '')", (), "42501", "permission denied")


def test_a_client_reads_only_its_own_refunds(
    conn: psycopg.Connection,
    operator: psycopg.Connection,
    client: psycopg.Connection,
    client_login: str,
) -> None:
    mine = make_payment(conn, "succeeded", owner_role=client_login)
    theirs = make_payment(conn, "succeeded", owner_role="someone_else")
    for payment_id in (mine, theirs):
        with pytest.raises(psycopg.Error, match="is not answered after"):
            operator.execute(REFUND, (payment_id, 100, None))
    assert client.execute("SELECT payment_id FROM payments.refunds").fetchall() == [(mine,)]
    shown = client.execute("SELECT get_payment(%s)", (mine,)).fetchone()
    assert shown is not None
    assert [r["amount"] for r in shown[0]["refunds"]] == [Decimal("1.00")]
    assert shown[0]["amount_refunded"] == Decimal("0.00")
    assert client.execute("SELECT get_payment(%s)", (theirs,)).fetchone() == (None,)


REFUND_FACTS = ("id, payment_id, amount, currency, reason, status, provider_refund_id,"
                " failure_reason, source, provider_synced_at, created_at, updated_at")  # fmt: skip


def test_a_client_reads_its_refunds_facts_but_not_who_asked(
    conn: psycopg.Connection,
    operator: psycopg.Connection,
    client: psycopg.Connection,
    client_login: str,
    refused: Refused,
) -> None:
    """requested_role and requested_user_id are the operator's login and JWT sub: not the
    client's to read, even on its own refunds."""
    mine = make_payment(conn, "succeeded", owner_role=client_login)
    theirs = make_payment(conn, "succeeded", owner_role="someone_else")
    for payment_id in (mine, theirs):
        with pytest.raises(psycopg.Error, match="is not answered after"):
            operator.execute(REFUND, (payment_id, 100, "duplicate"))
    for columns in ("requested_role", "requested_user_id", "*", "id, requested_user_id",
                    "count(requested_role)"):  # fmt: skip
        refused(client, f"SELECT {columns} FROM payments.refunds", (), "42501",
                "permission denied for table refunds")  # fmt: skip
    refused(client, "SELECT id FROM payments.refunds WHERE requested_role IS NOT NULL", (),
            "42501", "permission denied for table refunds")  # fmt: skip

    facts = client.execute(f"SELECT {REFUND_FACTS} FROM payments.refunds").fetchall()
    assert [(row[1], row[2], row[4], row[5], row[8]) for row in facts] == [
        (mine, 100, "duplicate", "pending_refund", "rpc")
    ]
    # Operators still read who asked, on every refund.
    login = operator.execute("SELECT session_user::text").fetchone()
    assert login is not None
    assert operator.execute(
        "SELECT payment_id, requested_role FROM payments.refunds ORDER BY payment_id = %s",
        (theirs,),
    ).fetchall() == [(mine, login[0]), (theirs, login[0])]


# --- concurrency ---------------------------------------------------------------------------------


def test_twenty_concurrent_refunds_of_thirty_percent_record_at_most_three(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole
) -> None:
    payment_id = make_payment(conn, "succeeded", owner_role="someone", amount=10000)
    login = login_role("payment_operator")
    start = threading.Barrier(20)
    outcomes: list[str] = []
    lock = threading.Lock()

    def call() -> None:
        with connect_as(database_url, login) as session:
            session.execute("SET payments.sync_timeout = '0.5 s'")
            start.wait()
            try:
                session.execute(REFUND, (payment_id, 3000, None))
                outcome = "answered"
            except psycopg.Error as exc:
                outcome = str(exc.diag.message_primary)
        with lock:
            outcomes.append(outcome)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(outcomes) == 20
    waited = [o for o in outcomes if "is not answered after" in o]
    refused = [o for o in outcomes if "more than the 1000 left to refund" in o]
    assert (len(waited), len(refused)) == (3, 17), outcomes
    assert conn.execute(
        "SELECT count(*), sum(amount) FROM payments.refunds WHERE payment_id = %s", (payment_id,)
    ).fetchone() == (3, 9000)
    assert conn.execute(
        "SELECT count(*) FROM metadata.river_job WHERE kind = 'create_refund'"
    ).fetchone() == (3,)


# --- the wait, and a request given up ------------------------------------------------------------


def test_a_timed_out_request_goes_on(
    conn: psycopg.Connection, operator: psycopg.Connection
) -> None:
    payment_id = make_payment(conn, "requires_capture", owner_role="x", capture_method="manual")
    with pytest.raises(psycopg.Error) as caught:
        operator.execute(CAPTURE, (payment_id, None))
    diag = caught.value.diag
    row = conn.execute("SELECT id, status FROM payments.payment_operations").fetchone()
    assert row is not None
    assert diag.message_primary == (
        f"Capture of payment {payment_id} (request {row[0]}) is not answered after 00:00:00.3"
    )
    assert diag.message_detail == "The request is recorded and the workers will still carry it out."
    assert diag.message_hint is not None and f"get_payment('{payment_id}')" in diag.message_hint
    job = conn.execute(
        "SELECT kind, args, state FROM metadata.river_job WHERE kind = 'capture_payment'"
    ).fetchone()
    assert job == (
        "capture_payment",
        {"operation_id": str(row[0]), "payment_id": str(payment_id)},
        "available",
    )


def give_up_when_recorded(
    conn: psycopg.Connection, kind: str, caller_message: str
) -> threading.Thread:
    """Discards the first `kind` job once it exists, its last error carrying
    `caller_message`, as the executor does with a permanent Stripe refusal."""
    error = {"at": "2026-12-02T00:00:00Z", "attempt": 1, "error": "x", "trace": "",
             "caller_message": caller_message}  # fmt: skip

    listening = threading.Event()

    def run() -> None:
        with psycopg.connect(conn.info.dsn, autocommit=True) as admin:
            admin.execute('LISTEN "metadata.river_insert"')
            listening.set()
            for _ in admin.notifies(timeout=10, stop_after=1):
                pass
            admin.execute(
                "UPDATE metadata.river_job SET state = 'discarded', finalized_at = now(),"
                " errors = array_append(errors, %s::jsonb) WHERE kind = %s",
                (json.dumps(error), kind),
            )

    thread = threading.Thread(target=run)
    thread.start()
    assert listening.wait(10)
    return thread


@pytest.mark.parametrize(
    ("operation", "kind", "raised"),
    [
        ("capture", "capture_payment", "Capture failed: This PaymentIntent could not be captured"),
        ("cancel", "cancel_payment", "Cancel failed: This PaymentIntent could not be captured"),
        ("refund", "create_refund", "Refund failed: This PaymentIntent could not be captured"),
    ],
)
def test_a_refused_request_raises_strips_words(
    conn: psycopg.Connection, operator: psycopg.Connection, operation: str, kind: str, raised: str
) -> None:
    status = "succeeded" if operation == "refund" else "requires_capture"
    payment_id = make_payment(conn, status, owner_role="x", capture_method="manual")
    operator.execute("SET payments.sync_timeout = '10 s'")
    thread = give_up_when_recorded(conn, kind, "This PaymentIntent could not be captured.")
    statement, args = CALLS[operation]
    with pytest.raises(psycopg.Error, match=raised):
        operator.execute(statement, args(payment_id))
    thread.join(timeout=10)
    table = "payments.refunds" if operation == "refund" else "payments.payment_operations"
    column = "failure_reason" if operation == "refund" else "error_message"
    assert conn.execute(f"SELECT status, {column} FROM {table}").fetchall() == [
        ("failed", "This PaymentIntent could not be captured.")
    ]
