"""The cancel and refund jobs one attempt at a time (claimed and run here, no worker
thread), where their order against the create job and Stripe's saved answers matter."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any
from uuid import UUID, uuid4

import psycopg
import pytest
import stripe
from psycopg.rows import dict_row

from stripe_standin.client import create_then_5xx
from stripe_standin.process import StandinProcess
from tests import pg
from tests.integration.conftest import MakeRole, connect_as
from tests.integration.lifecycle import event_row, record
from tests.integration.rows import (
    claim,
    insert_payment,
    job_id_of,
    job_row,
    make_due_and_claim,
    payment_row,
)
from tests.integration.standin_flows import sdk_client
from worker.executor import JobExecutor
from worker.store import Store


@pytest.fixture
def sdk(standin: StandinProcess) -> Iterator[stripe.StripeClient]:
    with sdk_client(standin.url) as client:
        yield client


def request(conn: psycopg.Connection, payment_id: UUID, operation: str) -> UUID:
    """A capture or cancel request as the RPC records it (its trigger enqueues the job)."""
    operation_id = uuid4()
    conn.execute(
        "INSERT INTO payments.payment_operations (id, payment_id, operation, requested_role)"
        " VALUES (%s, %s, %s, session_user)",
        (operation_id, payment_id, operation),
    )
    return operation_id


def authorised(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, sdk: stripe.StripeClient
) -> tuple[UUID, str]:
    """A manual payment the customer paid, requires_capture in the database too: (its id,
    its intent's)."""
    row = conn.execute(
        "INSERT INTO payments.transactions (owner_role, amount, currency, capture_method)"
        " SELECT session_user, 2500, currency, 'manual' FROM payments.config RETURNING id"
    ).fetchone()
    assert row is not None
    payment_id: UUID = row[0]
    executor.execute(claim(store))  # the create job
    intent_id = str(payment_row(conn, payment_id)["provider_payment_id"])
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    conn.execute("SELECT payments.resync(%s)", (payment_id,))
    executor.execute(claim(store))  # the sync_payment job
    assert payment_row(conn, payment_id)["status"] == "requires_capture"
    return payment_id, intent_id


def operation_status(conn: psycopg.Connection, operation_id: UUID) -> tuple[str, str | None]:
    row = conn.execute(
        "SELECT status, error_message FROM payments.payment_operations WHERE id = %s",
        (operation_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def test_a_cancel_finds_the_intent_behind_a_saved_500_and_finishes_with_it(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    """The create key answers its saved 500 to everyone; the intent it made was canceled
    already (an earlier cancel attempt whose answer never got written): the cancel adopts
    it by search, canceled as it is, and creates nothing."""
    payment_id = insert_payment(conn)
    standin.admin.script([create_then_5xx()])
    executor.execute(claim(store))  # made the intent, answered (and saved) 500
    create_job = job_id_of(conn, payment_id)
    assert job_row(conn, create_job)["state"] == "retryable"
    (intent,) = standin.admin.intents_with_metadata("payment_id", str(payment_id))
    sdk.v1.payment_intents.cancel(intent["id"], {}, {"idempotency_key": "earlier-attempt"})

    operation_id = request(conn, payment_id, "cancel")
    executor.execute(claim(store))

    assert operation_status(conn, operation_id) == ("succeeded", None)
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_payment_id"]) == ("canceled", intent["id"])
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1


def test_a_capture_refused_because_it_is_done_already_finishes_with_stripes_intent(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = authorised(conn, store, executor, sdk)
    operation_id = request(conn, payment_id, "capture")
    # Captured in the dashboard before the job runs: Stripe refuses a second capture.
    sdk.v1.payment_intents.capture(intent_id, {}, {"idempotency_key": "dashboard-capture"})

    executor.execute(claim(store))

    assert operation_status(conn, operation_id) == ("succeeded", None)
    row = payment_row(conn, payment_id)
    assert (row["status"], row["amount_received"], row["amount_capturable"]) == (
        "succeeded",
        2500,
        0,
    )


def test_a_capture_stripe_refuses_fails_with_stripes_words(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = authorised(conn, store, executor, sdk)
    operation_id = request(conn, payment_id, "capture")
    # Stripe gives the authorisation up before the job runs.
    standin.admin.expire_authorization(intent_id)

    executor.execute(claim(store))

    status, error = operation_status(conn, operation_id)
    assert status == "failed"
    assert error == (
        "This PaymentIntent could not be captured because it has a status of canceled. "
        "Only a PaymentIntent with one of the following statuses may be captured: "
        "requires_capture."
    )
    job = conn.execute(
        "SELECT state, errors FROM metadata.river_job WHERE args->>'operation_id' = %s",
        (str(operation_id),),
    ).fetchone()
    assert job is not None and job[0] == "discarded"
    assert job[1][-1]["caller_message"] == error  # what the waiting RPC raises after "failed: "


def test_a_capture_refused_because_the_authorisation_expired_shows_the_payment_canceled(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    """Stripe's refusal says nothing of the payment, but its intent is canceled: giving
    the capture up re-reads the payment at once (a sync_payment job), written as any
    observation, rather than leaving it requires_capture for an event or the reconciler."""
    payment_id, intent_id = authorised(conn, store, executor, sdk)
    operation_id = request(conn, payment_id, "capture")
    standin.admin.expire_authorization(intent_id)

    executor.execute(claim(store))  # the capture: refused, given up

    assert operation_status(conn, operation_id)[0] == "failed"
    assert payment_row(conn, payment_id)["status"] == "requires_capture"
    waiting = conn.execute(
        "SELECT kind, args->>'payment_id' FROM metadata.river_job WHERE state = 'available'"
    ).fetchall()
    assert waiting == [("sync_payment", str(payment_id))]

    executor.execute(claim(store))  # the sync_payment job

    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_status"], row["cancellation_reason"]) == (
        "canceled",
        "canceled",
        "automatic",
    )
    assert row["amount_capturable"] == 0
    assert operation_status(conn, operation_id)[0] == "failed"  # the request stays refused


# --- a refund given up, and Stripe's refund that turns up after all -----------------------------


def paid(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, sdk: stripe.StripeClient
) -> tuple[UUID, str]:
    """A payment the customer paid with a card, succeeded in the database too: (its id, its
    intent's)."""
    payment_id = insert_payment(conn, owner_role=pg.USER)
    executor.execute(claim(store))  # the create job
    intent_id = str(payment_row(conn, payment_id)["provider_payment_id"])
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    conn.execute("SELECT payments.resync(%s)", (payment_id,))
    executor.execute(claim(store))  # the sync_payment job
    assert payment_row(conn, payment_id)["status"] == "succeeded"
    return payment_id, intent_id


def refund_requested(conn: psycopg.Connection, payment_id: UUID, amount: int) -> UUID:
    """A refund as refund_payment records it; its trigger enqueues its create_refund job."""
    refund_id = uuid4()
    conn.execute(
        "INSERT INTO payments.refunds (id, payment_id, amount, currency, source, requested_role)"
        " VALUES (%s, %s, %s, 'USD', 'rpc', session_user)",
        (refund_id, payment_id, amount),
    )
    return refund_id


def refund_row(conn: psycopg.Connection, refund_id: UUID) -> tuple[str, str | None, str | None]:
    """(status, provider_refund_id, failure_reason)"""
    row = conn.execute(
        "SELECT status, provider_refund_id, failure_reason FROM payments.refunds WHERE id = %s",
        (refund_id,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def refund_job(conn: psycopg.Connection, refund_id: UUID) -> dict[str, Any]:
    cur = conn.cursor(row_factory=dict_row)
    row = cur.execute(
        "SELECT id, state, errors FROM metadata.river_job"
        " WHERE kind = 'create_refund' AND args->>'refund_id' = %s",
        (str(refund_id),),
    ).fetchone()
    assert row is not None
    return row


def amount_refunded(conn: psycopg.Connection, payment_id: UUID) -> int:
    row = conn.execute(
        "SELECT (get_payment(%s)->>'amount_refunded')::numeric * 100", (payment_id,)
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_a_refund_given_up_behind_a_lost_answer_is_taken_back_when_its_event_arrives(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    """The job's last attempt makes the refund at Stripe, but every answer is lost (the
    list it asks before giving up too): the job is discarded and the refund fails. Stripe's
    refund.created then arrives; applying it takes Stripe's refund back onto the row by its
    metadata.refund_id (README, "Job kinds and giving up")."""
    payment_id, _ = paid(conn, store, executor, sdk)
    conn.execute("UPDATE payments.config SET max_attempts = 1")  # the first attempt is the last
    refund_id = refund_requested(conn, payment_id, 1000)
    standin.admin.configure(lose_response=1.0)
    executor.execute(claim(store))
    standin.admin.configure(lose_response=0.0)

    # Phase 1: given up, though Stripe holds the refund.
    (made,) = standin.admin.refunds()
    assert (made["metadata"]["refund_id"], made["amount"], made["status"]) == (
        str(refund_id),
        1000,
        "succeeded",
    )
    assert refund_job(conn, refund_id)["state"] == "discarded"
    assert refund_row(conn, refund_id) == (
        "failed",
        None,
        f"the refund could not be made (refund {refund_id}); the operator has the details",
    )
    assert amount_refunded(conn, payment_id) == 0

    # Phase 2: its event, recorded as the receiver records it, and applied.
    (created,) = [e for e in standin.admin.events() if e["type"] == "refund.created"]
    assert record(conn, created) == "stored"
    executor.execute(claim(store))  # the apply_stripe_event job

    assert event_row(conn, created["id"])["outcome"] == "applied"
    assert refund_row(conn, refund_id) == ("succeeded", made["id"], None)
    assert amount_refunded(conn, payment_id) == 1000
    assert len(standin.admin.refunds()) == 1  # taken back, not made again


def test_a_refund_at_stripe_with_our_id_but_not_our_amount_is_never_taken_for_ours(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    """The retry lists the intent's refunds first and finds one carrying this refund's id
    in its metadata, for another amount (made by hand, say): not this refund. The row
    fails, saying so, and nothing more is refunded; that refund's own event then records
    it as one made elsewhere, for its own amount, not onto the failed row."""
    payment_id, intent_id = paid(conn, store, executor, sdk)
    refund_id = refund_requested(conn, payment_id, 1000)
    standin.admin.configure(drop=1.0)
    executor.execute(claim(store))  # nothing reaches Stripe
    standin.admin.configure(drop=0.0)
    job_id = refund_job(conn, refund_id)["id"]
    assert refund_job(conn, refund_id)["state"] == "retryable"
    assert standin.admin.refunds() == []
    by_hand = sdk.v1.refunds.create(
        {"payment_intent": intent_id, "amount": 500, "metadata": {"refund_id": str(refund_id)}},
        {"idempotency_key": "by-hand"},
    )

    executor.execute(make_due_and_claim(conn, store, job_id))

    assert refund_job(conn, refund_id)["state"] == "completed"
    assert refund_row(conn, refund_id) == (
        "failed",
        None,
        f"Stripe answered with refund {by_hand.id} of 500 usd for request {refund_id}:"
        " not this refund; check it in Stripe",
    )
    assert [r["id"] for r in standin.admin.refunds()] == [by_hand.id]

    # Its refund.created, recorded as the receiver records it, and applied.
    (created,) = [e for e in standin.admin.events() if e["type"] == "refund.created"]
    assert record(conn, created) == "stored"
    executor.execute(claim(store))  # the apply_stripe_event job

    assert refund_row(conn, refund_id)[:2] == ("failed", None)
    elsewhere = conn.execute(
        "SELECT amount, status, source FROM payments.refunds"
        " WHERE payment_id = %s AND provider_refund_id = %s",
        (payment_id, by_hand.id),
    ).fetchall()
    assert elsewhere == [(500, "succeeded", "stripe")]
    assert amount_refunded(conn, payment_id) == 500  # what Stripe refunded, no more


PAID_MEANWHILE = "the payment was paid meanwhile; only an operator can cancel it now"


def manual_payment(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, owner: str
) -> tuple[UUID, str]:
    """`owner`'s manual payment whose create job stored its intent (pending): (its id, its
    intent's)."""
    row = conn.execute(
        "INSERT INTO payments.transactions (owner_role, amount, currency, capture_method)"
        " SELECT %s, 2500, currency, 'manual' FROM payments.config RETURNING id",
        (owner,),
    ).fetchone()
    assert row is not None
    executor.execute(claim(store))  # the create job
    payment = payment_row(conn, row[0])
    assert payment["status"] == "pending"
    return row[0], str(payment["provider_payment_id"])


def cancel_waiting(
    conn: psycopg.Connection, database_url: str, login: str, payment_id: UUID, role: str | None
) -> tuple[threading.Thread, list[BaseException | None]]:
    """`login` calls cancel_payment(payment_id) (as `role` if given) and waits for the
    answer on a thread of its own; returned once the request is recorded."""
    outcome: list[BaseException | None] = []

    def call() -> None:
        with connect_as(database_url, login) as session:
            session.execute("SET payments.sync_timeout = '30 s'")
            if role is not None:
                session.execute(f"SET ROLE {role}")
            try:
                session.execute("SELECT cancel_payment(%s, 'requested_by_customer')", (payment_id,))
                outcome.append(None)
            except psycopg.Error as exc:
                outcome.append(exc)

    with psycopg.connect(conn.info.dsn, autocommit=True) as listener:
        listener.execute('LISTEN "metadata.river_insert"')
        thread = threading.Thread(target=call)
        thread.start()
        # The request's job is inserted with it: its NOTIFY says it is recorded.
        assert next(listener.notifies(timeout=10, stop_after=1), None) is not None
    return thread, outcome


def answered(thread: threading.Thread, outcome: list[BaseException | None]) -> BaseException | None:
    thread.join(timeout=30)
    assert not thread.is_alive() and len(outcome) == 1
    return outcome[0]


def cancel_request(conn: psycopg.Connection, payment_id: UUID) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT status, error_message, requested_by_operator FROM payments.payment_operations"
        " WHERE payment_id = %s",
        (payment_id,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def cancel_calls(standin: StandinProcess) -> int:
    """The cancels Stripe was asked for since the test began (the stand-in is reset)."""
    return int(standin.admin.stats()["requests"]["by_route"]["POST /v1/payment_intents/:id/cancel"])


def test_a_clients_cancel_of_a_payment_paid_before_its_job_runs_releases_nothing(  # noqa: PLR0917
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    login_role: MakeRole,
) -> None:
    """Recorded while the payment was unpaid (the RPC checked it), but the customer pays
    the manual payment before the job runs, and Stripe would cancel an authorised intent
    too. The job shows the database the intent first: the authorisation stays, at Stripe
    and in the database, and the waiting client is told why."""
    client = login_role("payment_client")
    payment_id, intent_id = manual_payment(conn, store, executor, client)
    thread, outcome = cancel_waiting(conn, database_url, client, payment_id, None)
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    assert payment_row(conn, payment_id)["status"] == "pending"  # no event applied yet

    cancel_job = claim(store)
    assert cancel_job.kind == "cancel_payment"
    executor.execute(cancel_job)

    error = answered(thread, outcome)
    assert isinstance(error, psycopg.Error)
    assert error.diag.message_primary == f"Cancel failed: {PAID_MEANWHILE}"
    assert cancel_request(conn, payment_id) == ("failed", PAID_MEANWHILE, False)
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_status"], row["amount_capturable"]) == (
        "requires_capture",
        "requires_capture",
        2500,
    )
    assert sdk.v1.payment_intents.retrieve(intent_id).status == "requires_capture"
    assert cancel_calls(standin) == 0
    assert job_row(conn, cancel_job.id)["state"] == "completed"


def test_a_clients_cancel_of_a_payment_still_unpaid_cancels_it(  # noqa: PLR0917
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    login_role: MakeRole,
) -> None:
    """Checked first, found unpaid: cancelled at Stripe, as before."""
    client = login_role("payment_client")
    payment_id, intent_id = manual_payment(conn, store, executor, client)
    thread, outcome = cancel_waiting(conn, database_url, client, payment_id, None)

    executor.execute(claim(store))

    assert answered(thread, outcome) is None
    assert cancel_request(conn, payment_id) == ("succeeded", None, False)
    assert payment_row(conn, payment_id)["status"] == "canceled"
    assert sdk.v1.payment_intents.retrieve(intent_id).status == "canceled"
    assert cancel_calls(standin) == 1


def test_an_operators_cancel_of_a_payment_paid_meanwhile_still_releases_it(  # noqa: PLR0917
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    login_role: MakeRole,
) -> None:
    """An operator may cancel an authorised payment: its request goes to Stripe as it is."""
    payment_id, intent_id = manual_payment(conn, store, executor, "someone")
    operator = login_role("payment_operator")
    thread, outcome = cancel_waiting(conn, database_url, operator, payment_id, None)
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})

    executor.execute(claim(store))

    assert answered(thread, outcome) is None
    assert cancel_request(conn, payment_id) == ("succeeded", None, True)
    assert payment_row(conn, payment_id)["status"] == "canceled"
    assert sdk.v1.payment_intents.retrieve(intent_id).status == "canceled"
    assert cancel_calls(standin) == 1


def test_a_cancel_recorded_before_who_asked_was_kept_is_held_to_the_clients_rule(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    """A request from before requested_by_operator (NULL) may have been a client's."""
    payment_id, intent_id = manual_payment(conn, store, executor, "someone")
    operation_id = request(conn, payment_id, "cancel")
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})

    executor.execute(claim(store))

    assert operation_status(conn, operation_id) == ("failed", PAID_MEANWHILE)
    assert payment_row(conn, payment_id)["status"] == "requires_capture"
    assert sdk.v1.payment_intents.retrieve(intent_id).status == "requires_capture"
    assert cancel_calls(standin) == 0


def test_a_clients_cancel_before_the_intent_is_stored_checks_the_intent_it_obtains(  # noqa: PLR0917
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    login_role: MakeRole,
) -> None:
    """The create job stalls: the cancel job obtains the intent with its keys, shows it to
    the database (which adopts it: unpaid) and cancels it."""
    client = login_role("payment_client")
    payment_id = insert_payment(conn, owner_role=client)
    claim(store)  # the create job, held by a worker that stalls
    thread, outcome = cancel_waiting(conn, database_url, client, payment_id, None)

    executor.execute(claim(store))

    assert answered(thread, outcome) is None
    assert cancel_request(conn, payment_id) == ("succeeded", None, False)
    (intent,) = standin.admin.intents_with_metadata("payment_id", str(payment_id))
    assert intent["status"] == "canceled"
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_payment_id"]) == ("canceled", intent["id"])
    assert cancel_calls(standin) == 1
