"""The guard triggers of capture, cancel and refunds (schema/deploy/payment_operations.sql)
against the one role no grant stops, the administrator (a superuser): a payment's capture
method, a refund's fixed fields and Stripe's id, every refund status move Stripe does not
make, and a capture or cancel request's fixed fields and final status. Each refusal says
why and changes nothing."""

from __future__ import annotations

import itertools
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg import sql
from psycopg.rows import dict_row


class Rollback(Exception):
    """Raised to roll a test's transaction back."""


@pytest.fixture(autouse=True)
def _as_superuser(conn: psycopg.Connection) -> None:
    """What these tests prove is about the administrator: no grant stands in its way."""
    is_superuser = "SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
    assert conn.execute(is_superuser).fetchone() == (True,)


def payment(
    conn: psycopg.Connection, status: str = "succeeded", capture_method: str = "automatic"
) -> UUID:
    """A payment with its intent, moved to `status` as the worker's observations would."""
    payment_id = uuid4()
    intent = f"pi_{payment_id.hex[:16]}"
    conn.execute(
        "INSERT INTO payments.transactions (id, owner_role, amount, currency, capture_method)"
        " VALUES (%s, 'someone', 2500, 'USD', %s)",
        (payment_id, capture_method),
    )
    conn.execute(
        "UPDATE payments.transactions SET status = %s, provider_payment_id = %s,"
        " provider_client_secret = %s, amount_received = 2500 WHERE id = %s",
        (status, intent, f"{intent}_secret_x", payment_id),
    )
    return payment_id


def row_of(conn: psycopg.Connection, table: str, row_id: UUID) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        sql.SQL("SELECT * FROM {} WHERE id = %s").format(sql.Identifier("payments", table)),
        (row_id,),
    ).fetchone()
    assert row is not None
    return row


def update(
    conn: psycopg.Connection, table: str, row_id: UUID, change: str, args: tuple[Any, ...] = ()
) -> None:
    conn.execute(
        sql.SQL("UPDATE {} SET {} WHERE id = %s").format(
            sql.Identifier("payments", table), sql.SQL(change)
        ),
        (*args, row_id),
    )


def refused_unchanged(
    conn: psycopg.Connection, table: str, row_id: UUID, change: str, args: tuple[Any, ...] = ()
) -> psycopg.errors.RaiseException:
    """UPDATEs the row with `change`: the guard raises, and the row is as it was."""
    before = row_of(conn, table, row_id)
    with pytest.raises(psycopg.errors.RaiseException) as err, conn.transaction():
        update(conn, table, row_id, change, args)
    assert row_of(conn, table, row_id) == before
    return err.value


# --- a payment's capture method ----------------------------------------------------------------


@pytest.mark.parametrize(("made", "changed"), [("automatic", "manual"), ("manual", "automatic")])
def test_a_payments_capture_method_never_changes(
    conn: psycopg.Connection, made: str, changed: str
) -> None:
    """The create job's key stands for the capture method: another one would ask Stripe
    for a different intent under the same key."""
    for status in ("pending", "requires_capture", "succeeded"):
        payment_id = payment(conn, status, made)
        err = refused_unchanged(conn, "transactions", payment_id, "capture_method = %s", (changed,))
        assert err.diag.message_primary == (
            f"payment {payment_id}: id, owner, amount, currency, description, provider and"
            " capture method cannot change"
        )


# --- refunds -------------------------------------------------------------------------------------


def refund(conn: psycopg.Connection, payment_id: UUID, **columns: Any) -> UUID:
    """A refund as refund_payment records it (pending_refund), with `columns` changed."""
    refund_id = uuid4()
    values: dict[str, Any] = {
        "id": refund_id,
        "payment_id": payment_id,
        "amount": 1000,
        "currency": "USD",
        "reason": "requested_by_customer",
        "source": "rpc",
        "requested_role": "operator_login",
        "requested_user_id": "operator-sub",
        **columns,
    }
    conn.execute(
        sql.SQL("INSERT INTO payments.refunds ({}) VALUES ({})").format(
            sql.SQL(", ").join(map(sql.Identifier, values)),
            sql.SQL(", ").join(sql.Placeholder() * len(values)),
        ),
        tuple(values.values()),
    )
    return refund_id


REFUND_FIXED = [
    ("id", "id = gen_random_uuid()"),
    ("payment_id", "payment_id = %(other)s"),
    ("amount", "amount = amount + 1"),
    ("amount down", "amount = 1"),
    ("currency", "currency = 'EUR'"),
    ("reason", "reason = 'fraudulent'"),
    ("reason cleared", "reason = NULL"),
    ("source", "source = 'stripe'"),
    ("requested_role", "requested_role = 'mallory'"),
    ("requested_user_id", "requested_user_id = 'mallory'"),
    ("requested_user_id cleared", "requested_user_id = NULL"),
    ("created_at", "created_at = created_at - interval '1 day'"),
]


@pytest.mark.parametrize("change", [c for _, c in REFUND_FIXED], ids=[n for n, _ in REFUND_FIXED])
def test_a_refunds_fixed_fields_never_change(conn: psycopg.Connection, change: str) -> None:
    """What was decided under the payment's lock (how much, of which payment, why, who
    asked) stays as decided, whatever the refund's status."""
    paid, other = payment(conn), payment(conn)
    for status in ("pending_refund", "succeeded"):
        refund_id = refund(conn, paid)
        if status != "pending_refund":
            update(conn, "refunds", refund_id, "status = %s, provider_refund_id = %s",
                   (status, f"re_{refund_id.hex[:12]}"))  # fmt: skip
        before = row_of(conn, "refunds", refund_id)
        with pytest.raises(psycopg.errors.RaiseException) as err:
            conn.execute(
                sql.SQL("UPDATE payments.refunds SET {} WHERE id = %(id)s").format(sql.SQL(change)),
                {"id": refund_id, "other": other},
            )
        assert err.value.diag.message_primary == (
            f"refund {refund_id}: id, payment, amount, currency, reason and source cannot change"
        )
        assert row_of(conn, "refunds", refund_id) == before


def test_a_refunds_stripe_id_is_set_once(conn: psycopg.Connection) -> None:
    refund_id = refund(conn, payment(conn))
    # Set once: Stripe has it now.
    update(conn, "refunds", refund_id, "provider_refund_id = 're_first', status = 'pending'")
    for change in ("provider_refund_id = 're_other'", "provider_refund_id = NULL",
                   "provider_refund_id = 're_other', status = 'succeeded'"):  # fmt: skip
        err = refused_unchanged(conn, "refunds", refund_id, change)
        assert err.diag.message_primary == f"refund {refund_id} already is Stripe's re_first"
    update(conn, "refunds", refund_id, "status = 'succeeded'")
    assert row_of(conn, "refunds", refund_id)["provider_refund_id"] == "re_first"


REFUND_STATUSES = ("pending_refund", "pending", "requires_action", "succeeded", "failed",
                   "canceled")  # fmt: skip
# Stripe's refund lifecycle, and a succeeded refund that fails later (the bank returns it).
REFUND_MOVES = {("pending_refund", s) for s in REFUND_STATUSES if s != "pending_refund"} | {
    ("pending", "requires_action"),
    ("pending", "succeeded"),
    ("pending", "failed"),
    ("pending", "canceled"),
    ("requires_action", "pending"),
    ("requires_action", "succeeded"),
    ("requires_action", "failed"),
    ("requires_action", "canceled"),
    ("succeeded", "failed"),
}


def refund_moves(
    conn: psycopg.Connection, *, adopting: bool
) -> tuple[set[tuple[str, str]], dict[tuple[str, str], psycopg.errors.RaiseException]]:
    """Tries every move between two statuses on one refund, each in a transaction rolled
    back. `adopting`: the refund reaches the first status without Stripe's id and the move
    sets it (Stripe turned out to hold it); else it has its id from the first status on."""
    refund_id = refund(conn, payment(conn))
    allowed: set[tuple[str, str]] = set()
    refused: dict[tuple[str, str], psycopg.errors.RaiseException] = {}
    for old, new in itertools.permutations(REFUND_STATUSES, 2):
        with pytest.raises(Rollback), conn.transaction():
            if old != "pending_refund":
                update(conn, "refunds", refund_id, "status = %s, provider_refund_id = %s",
                       (old, None if adopting else "re_1"))  # fmt: skip
            before = row_of(conn, "refunds", refund_id)
            try:
                with conn.transaction():
                    update(conn, "refunds", refund_id, "status = %s, provider_refund_id = 're_1'",
                           (new,))  # fmt: skip
                allowed.add((old, new))
            except psycopg.errors.RaiseException as exc:
                refused[(old, new)] = exc
                assert row_of(conn, "refunds", refund_id) == before
            raise Rollback
    assert row_of(conn, "refunds", refund_id)["status"] == "pending_refund"
    return allowed, refused


def test_the_refund_guard_allows_exactly_stripes_moves(conn: psycopg.Connection) -> None:
    allowed, refused = refund_moves(conn, adopting=False)
    assert allowed == REFUND_MOVES
    assert refused.keys() == set(itertools.permutations(REFUND_STATUSES, 2)) - REFUND_MOVES
    for (old, new), exc in refused.items():
        assert str(exc.diag.message_primary).endswith(f": status cannot go from {old} to {new}"), (
            exc
        )
        final = old in ("failed", "canceled")
        assert exc.diag.message_detail == (
            f"{old} is final." if final else "Stripe makes no such move."
        )


def test_a_failed_refund_is_taken_back_only_when_stripe_turns_out_to_hold_it(
    conn: psycopg.Connection,
) -> None:
    """A refund given up before Stripe confirmed it (failed, no id) moves on to Stripe's
    status when its id is set in the same update, as an observation of Stripe's refund
    does; every other status keeps Stripe's moves alone."""
    allowed, refused = refund_moves(conn, adopting=True)
    # Into Stripe's status: never back to pending_refund (Stripe does not have it yet).
    taken_back = {("failed", s) for s in REFUND_STATUSES if s not in ("failed", "pending_refund")}
    assert allowed == REFUND_MOVES | taken_back
    assert refused.keys() == set(itertools.permutations(REFUND_STATUSES, 2)) - allowed


def test_a_refund_guard_refusal_says_why(conn: psycopg.Connection) -> None:
    refund_id = refund(conn, payment(conn))
    update(conn, "refunds", refund_id, "status = 'canceled', provider_refund_id = 're_1'")
    err = refused_unchanged(conn, "refunds", refund_id, "status = 'succeeded'")
    assert (
        err.diag.message_primary
        == f"refund {refund_id}: status cannot go from canceled to succeeded"
    )
    assert err.diag.message_detail == "canceled is final."


# --- capture and cancel requests -----------------------------------------------------------------


def operation(conn: psycopg.Connection, payment_id: UUID, kind: str = "capture") -> UUID:
    """A capture (of 1000) or cancel (requested_by_customer) request as the RPC records it."""
    operation_id = uuid4()
    conn.execute(
        "INSERT INTO payments.payment_operations (id, payment_id, operation, amount, reason,"
        " requested_role, requested_user_id) VALUES (%s, %s, %s, %s, %s, 'login', 'sub')",
        (
            operation_id,
            payment_id,
            kind,
            1000 if kind == "capture" else None,
            "requested_by_customer" if kind == "cancel" else None,
        ),
    )
    return operation_id


OPERATION_FIXED = [
    ("id", "capture", "id = gen_random_uuid()"),
    ("payment_id", "capture", "payment_id = %(other)s"),
    ("operation", "capture", "operation = 'cancel', amount = NULL"),
    ("operation of a cancel", "cancel", "operation = 'capture', reason = NULL"),
    ("amount", "capture", "amount = 2500"),
    ("amount cleared", "capture", "amount = NULL"),
    ("reason", "cancel", "reason = 'fraudulent'"),
    ("requested_role", "cancel", "requested_role = 'mallory'"),
    ("requested_user_id", "cancel", "requested_user_id = NULL"),
    ("created_at", "capture", "created_at = now() + interval '1 day'"),
]


@pytest.mark.parametrize(
    ("kind", "change"),
    [(k, c) for _, k, c in OPERATION_FIXED],
    ids=[n for n, _, _ in OPERATION_FIXED],
)
def test_a_requests_fixed_fields_never_change(
    conn: psycopg.Connection, kind: str, change: str
) -> None:
    paid, other = payment(conn, "requires_capture", "manual"), payment(conn)
    operation_id = operation(conn, paid, kind)
    before = row_of(conn, "payment_operations", operation_id)
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(
            sql.SQL("UPDATE payments.payment_operations SET {} WHERE id = %(id)s").format(
                sql.SQL(change)
            ),
            {"id": operation_id, "other": other},
        )
    assert (
        err.value.diag.message_primary
        == f"operation {operation_id}: only its status and error can change"
    )
    assert row_of(conn, "payment_operations", operation_id) == before


OPERATION_STATUSES = ("requested", "succeeded", "failed")
# Each consistent with the table's checks, so that only the guard can refuse.
OPERATION_SET = {
    "requested": "status = 'requested', error_message = NULL, finished_at = NULL",
    "succeeded": "status = 'succeeded', error_message = NULL, finished_at = now()",
    "failed": "status = 'failed', error_message = 'declined', finished_at = now()",
}


def test_a_request_is_decided_once(conn: psycopg.Connection) -> None:
    operation_id = operation(conn, payment(conn, "requires_capture", "manual"))
    allowed: set[tuple[str, str]] = set()
    for old, new in itertools.permutations(OPERATION_STATUSES, 2):
        with pytest.raises(Rollback), conn.transaction():
            update(conn, "payment_operations", operation_id, OPERATION_SET[old])
            if old == "requested":
                update(conn, "payment_operations", operation_id, OPERATION_SET[new])
                allowed.add((old, new))
            else:
                err = refused_unchanged(
                    conn, "payment_operations", operation_id, OPERATION_SET[new]
                )
                assert (
                    err.diag.message_primary
                    == f"operation {operation_id}: status cannot go from {old} to {new}"
                )
                assert err.diag.message_detail == f"{old} is final."
            raise Rollback
    assert allowed == {("requested", "succeeded"), ("requested", "failed")}
    assert row_of(conn, "payment_operations", operation_id)["status"] == "requested"
