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


def request_cancel(conn: psycopg.Connection, payment_id: UUID) -> UUID:
    """A cancel request as the RPC records it (its trigger enqueues the job)."""
    operation_id = uuid4()
    conn.execute(
        "INSERT INTO payments.payment_operations (id, payment_id, operation, requested_role)"
        " VALUES (%s, %s, 'cancel', session_user)",
        (operation_id, payment_id),
    )
    return operation_id


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

    operation_id = request_cancel(conn, payment_id)
    executor.execute(claim(store))

    assert operation_status(conn, operation_id) == ("succeeded", None)
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_payment_id"]) == ("canceled", intent["id"])
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1
