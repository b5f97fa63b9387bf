"""The cancel and refund jobs one attempt at a time (claimed and run here, no worker
thread), where their order against the create job and Stripe's saved answers matter."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import UUID, uuid4

import psycopg
import pytest
import stripe

from stripe_standin.client import create_then_5xx
from stripe_standin.process import StandinProcess
from tests.integration.rows import claim, insert_payment, job_id_of, job_row, payment_row
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
