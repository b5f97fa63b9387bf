"""JobExecutor.execute on claimed jobs, against the stand-in over HTTP with the real SDK."""

from __future__ import annotations

import json
import logging
import threading
import time
from datetime import datetime, timedelta
from typing import Any
from uuid import uuid4

import psycopg
import pytest

from stripe_standin.client import (
    api_error,
    card_declined,
    drop,
    lose_response,
    rate_limit,
    scripted_error,
)
from stripe_standin.process import StandinProcess
from tests.integration.conftest import API_KEY
from tests.integration.rows import (
    CONFIGURED,
    QUEUE,
    claim,
    db_now,
    insert_payment,
    job_row,
    make_due_and_claim,
    payment_row,
)
from worker import handlers
from worker.executor import JobExecutor
from worker.handlers import caller_reason
from worker.jobs import Done, Kinds
from worker.models import Job
from worker.store import Store
from worker.stripe_gateway import StripeGateway, StripeSettings

CREATE_ROUTE = "POST /v1/payment_intents"
ERROR_KEYS = {"at", "attempt", "error", "trace"}


def creates(standin: StandinProcess) -> int:
    return int(standin.admin.stats()["requests"]["by_route"][CREATE_ROUTE])


def test_success_stores_the_intent_and_completes_the_job(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED, description="Order 42")
    job = claim(store, "test-worker")

    executor.execute(job)

    (intent,) = standin.admin.intents_with_metadata("payment_id", str(payment_id))
    assert (intent["amount"], intent["currency"], intent["description"]) == (
        2500,
        "usd",
        "Order 42",
    )
    stored = payment_row(conn, payment_id)
    assert stored["status"] == "pending"
    assert stored["provider_payment_id"] == intent["id"]
    assert stored["provider_client_secret"] == intent["client_secret"]
    assert stored["error_message"] is None
    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"], row["errors"]) == ("completed", 1, None)
    assert row["finalized_at"] is not None
    assert creates(standin) == 1


@pytest.mark.parametrize(
    "case",
    [
        (api_error(), "An unknown error occurred."),
        (rate_limit(), "Request rate limit exceeded."),
        (drop(), "Unexpected error communicating with Stripe."),
    ],
    ids=["500", "429", "drop"],
)
def test_transient_failure_makes_the_job_retryable(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    case: tuple[dict[str, Any], str],
) -> None:
    fault, message = case
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    job = claim(store, "test-worker")
    standin.admin.script([fault])
    before = db_now(conn)

    executor.execute(job)

    after = db_now(conn)
    row = job_row(conn, job.id)
    assert row["state"] == "retryable"
    assert row["finalized_at"] is None
    (entry,) = row["errors"]
    assert set(entry) == ERROR_KEYS
    assert entry["attempt"] == 1
    assert datetime.fromisoformat(entry["at"]) >= before - timedelta(seconds=1)
    assert entry["error"].startswith(message)
    assert entry["trace"].startswith("Traceback")
    # River's backoff after attempt 1: 1 s, ±10 %.
    assert (
        before + timedelta(seconds=0.85) <= row["scheduled_at"] <= after + timedelta(seconds=1.15)
    )
    stored = payment_row(conn, payment_id)
    assert (stored["status"], stored["provider_payment_id"]) == ("pending_intent", None)
    assert standin.admin.intents_with_metadata("payment_id", str(payment_id)) == []
    assert standin.admin.script_pending() == 0


def test_giving_up_after_the_last_attempt_fails_the_payment(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    conn.execute("UPDATE payments.config SET max_attempts = 2")
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script([api_error(), api_error()])
    job = claim(store, "test-worker")
    assert job.max_attempts == 2

    executor.execute(job)
    assert job_row(conn, job.id)["state"] == "retryable"
    assert payment_row(conn, payment_id)["status"] == "pending_intent"

    job = make_due_and_claim(conn, store, job.id)
    assert job.attempt == 2
    executor.execute(job)

    row = job_row(conn, job.id)
    assert row["state"] == "discarded"
    assert row["finalized_at"] is not None
    assert [entry["attempt"] for entry in row["errors"]] == [1, 2]
    assert all(set(entry) == ERROR_KEYS for entry in row["errors"])
    stored = payment_row(conn, payment_id)
    assert stored["status"] == "failed"
    # The caller learns which payment failed; why is in errors[] and the log.
    assert stored["error_message"] == caller_reason(payment_id)
    assert [entry["error"] for entry in row["errors"]] == ["An unknown error occurred."] * 2
    # Attempt 2: the first key replays its saved 500, a search finds no intent, the next
    # generation's key meets the second scripted 500.
    assert creates(standin) == 3
    assert standin.admin.intents_with_metadata("payment_id", str(payment_id)) == []


def test_card_error_fails_the_payment_at_once(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script([card_declined()])
    job = claim(store, "test-worker")

    executor.execute(job)

    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"]) == ("discarded", 1)
    assert row["finalized_at"] is not None
    (entry,) = row["errors"]
    assert entry["error"] == "Your card was declined."
    stored = payment_row(conn, payment_id)
    assert (stored["status"], stored["error_message"]) == ("failed", "Your card was declined.")
    assert stored["provider_payment_id"] is None


# What Stripe answers a request made with a wrong key: its message quotes the key, masked.
INVALID_KEY = scripted_error(
    401, "invalid_request_error", "Invalid API Key provided: sk_test_****9999"
)


@pytest.mark.parametrize(
    ("refusal", "detail"),
    [
        (INVALID_KEY, "Invalid API Key provided: [redacted]"),
        (
            scripted_error(
                403,
                "invalid_request_error",
                "The provided key 'rk_test_****abcd' does not have access to account acct_1X",
            ),
            "The provided key '[redacted]' does not have access to account acct_1X",
        ),
        (
            scripted_error(
                400, "invalid_request_error", "No such customer: 'cus_9s6XKzkNRiz8i3'", param="x"
            ),
            "No such customer: 'cus_9s6XKzkNRiz8i3'",
        ),
    ],
    ids=["authentication", "permission", "invalid_request"],
)
def test_a_refusal_that_is_not_about_the_card_gives_the_caller_no_internals(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    *,
    caplog: pytest.LogCaptureFixture,
    refusal: dict[str, Any],
    detail: str,
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script([refusal])
    job = claim(store, "test-worker")

    with caplog.at_level(logging.ERROR, logger="worker.executor"):
        executor.execute(job)

    stored = payment_row(conn, payment_id)
    assert stored["status"] == "failed"
    message = stored["error_message"]
    assert message == (
        f"the payment could not be created (payment {payment_id}); the operator has the details"
    )
    stripes_words = refusal["error"]["message"]
    for internal in ("sk_test_", "rk_test_", "9999", "Invalid API Key", "acct_", "cus_", "key"):
        assert internal not in message
    assert stripes_words not in message
    # The operator still has the whole detail: on the job, scrubbed, and in the log line.
    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"]) == ("discarded", 1)
    (entry,) = row["errors"]
    assert entry["error"] == detail
    assert "9999" not in entry["trace"] and "abcd" not in entry["trace"]
    (record,) = [r for r in caplog.records if r.getMessage() == "job discarded"]
    assert vars(record)["error"] == stripes_words
    assert vars(record)["payment_id"] == str(payment_id)


def test_a_card_error_message_is_scrubbed_before_the_caller_sees_it(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script(
        [
            scripted_error(
                402,
                "card_error",
                "Declined for sk_test_51Hleaked0key and pi_3Nabc_secret_XYZ123, sorry.",
                code="card_declined",
            )
        ]
    )

    executor.execute(claim(store, "test-worker"))

    stored = payment_row(conn, payment_id)
    assert stored["status"] == "failed"
    assert stored["error_message"] == "Declined for [redacted] and [redacted], sorry."


def test_lost_response_then_retry_creates_exactly_one_intent(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script([lose_response()])
    job = claim(store, "test-worker")

    executor.execute(job)

    # Stripe made the intent, but the worker never heard: it must retry, not fail.
    assert job_row(conn, job.id)["state"] == "retryable"
    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1

    executor.execute(make_due_and_claim(conn, store, job.id))

    (intent,) = standin.admin.intents_with_metadata("payment_id", str(payment_id))
    stored = payment_row(conn, payment_id)
    assert stored["status"] == "pending"
    assert stored["provider_payment_id"] == intent["id"]
    assert stored["provider_client_secret"] == intent["client_secret"]
    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"], len(row["errors"])) == ("completed", 2, 1)
    stats = standin.admin.stats()
    assert stats["payment_intents_created"] == 1
    assert stats["idempotent_replays"] == 1


def test_a_payment_that_already_has_its_intent_is_not_sent_again(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    conn.execute(
        "UPDATE payments.transactions SET status = 'pending', provider_payment_id = 'pi_earlier',"
        " provider_client_secret = 'pi_earlier_secret_x' WHERE id = %s",
        (payment_id,),
    )
    before = payment_row(conn, payment_id)
    job = claim(store, "test-worker")

    executor.execute(job)

    row = job_row(conn, job.id)
    assert (row["state"], row["errors"]) == ("completed", None)
    assert payment_row(conn, payment_id) == before
    assert standin.admin.stats()["requests"]["total"] == 0


def test_a_job_of_an_unknown_kind_is_retried_with_a_clear_error(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts)"
        " VALUES (%s, 'send_invoice', '{}', 5)",
        (QUEUE,),
    )
    job = claim(store, "test-worker")

    executor.execute(job)

    row = job_row(conn, job.id)
    assert row["state"] == "retryable"
    (entry,) = row["errors"]
    assert entry["error"] == "no handler registered for job kind 'send_invoice'"
    assert standin.admin.stats()["requests"]["total"] == 0


def test_a_missing_payment_discards_the_job(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    missing = uuid4()
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts)"
        " VALUES (%s, 'create_payment_intent', jsonb_build_object('payment_id', %s::text), 5)",
        (QUEUE, missing),
    )
    job = claim(store, "test-worker")

    executor.execute(job)

    row = job_row(conn, job.id)
    assert row["state"] == "discarded"
    assert row["errors"][0]["error"] == f"payment {missing} does not exist"
    assert standin.admin.stats()["requests"]["total"] == 0


def test_a_payment_in_another_currency_fails_without_charging(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    conn.execute("UPDATE payments.config SET currency = 'EUR'")
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    assert payment_row(conn, payment_id)["currency"] == "EUR"
    job = claim(store, "test-worker")

    executor.execute(job)  # built for USD

    assert job_row(conn, job.id)["state"] == "discarded"
    stored = payment_row(conn, payment_id)
    assert stored["status"] == "failed"
    assert stored["error_message"] == caller_reason(payment_id)
    (entry,) = job_row(conn, job.id)["errors"]
    assert entry["error"] == (
        "payment is in EUR but this worker charges in USD (PAYMENT_CURRENCY); not charged"
    )
    assert standin.admin.stats()["requests"]["total"] == 0


def test_errors_and_logs_never_contain_the_api_key_or_a_client_secret(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # As common.jsonlog.configure leaves it at LOG_LEVEL=DEBUG: everything but the SDKs' chatter.
    # (set_level also sets caplog's handler level, so the root's DEBUG comes last.)
    for noisy in ("stripe", "urllib3", "psycopg", "psycopg.pool"):
        caplog.set_level(logging.WARNING, logger=noisy)
    caplog.set_level(logging.DEBUG)
    payments = [
        insert_payment(conn, 1000 + i, currency=CONFIGURED, description="Order 42")
        for i in range(5)
    ]
    standin.admin.script([api_error(), drop(), lose_response(), card_declined(), rate_limit()])
    jobs = store.job_get_available(10, "test-worker")
    assert len(jobs) == 5
    for job in jobs:
        executor.execute(job)
    # The transient ones again, now answered: a fresh intent, a replay, and a fresh one.
    retryable = [
        row[0]
        for row in conn.execute(
            "SELECT id FROM metadata.river_job WHERE state = 'retryable' ORDER BY id"
        )
    ]
    assert len(retryable) == 4
    for job_id in retryable:
        executor.execute(make_due_and_claim(conn, store, job_id))
    statuses = sorted(payment_row(conn, payment_id)["status"] for payment_id in payments)
    assert statuses == ["failed", "pending", "pending", "pending", "pending"]

    secrets = [
        entry["payment_intent"]["client_secret"] for entry in standin.admin.payment_intents()
    ]
    assert len(secrets) == 4
    assert all(secret and "_secret_" in secret for secret in secrets)
    errors = conn.execute(
        "SELECT coalesce(string_agg(e::text, ' '), '') FROM metadata.river_job, unnest(errors) e"
    ).fetchone()
    assert errors is not None
    assert errors[0].count('"trace"') == 5
    logged = "\n".join(
        f"{logging.Formatter().format(record)} {vars(record)!r}" for record in caplog.records
    )
    assert "job completed" in logged
    assert "job failed, will retry" in logged
    assert "job discarded" in logged
    for text in (errors[0], logged):
        assert API_KEY not in text
        assert "sk_test_" not in text
        assert "_secret_" not in text
        for secret in secrets:
            assert secret not in text


@pytest.mark.parametrize("fault", [api_error, drop, lose_response])
def test_the_sdk_retries_a_momentary_fault_within_the_attempt(
    conn: psycopg.Connection, store: Store, standin: StandinProcess, fault: Any
) -> None:
    gateway = StripeGateway(
        StripeSettings(API_KEY, standin.url, connect_timeout=2, read_timeout=5, network_retries=2)
    )
    kinds = Kinds()
    handlers.register(kinds, store, gateway, "USD")
    payment_id = insert_payment(conn, currency=CONFIGURED, description="Order 42")
    standin.admin.script([fault()])
    job = claim(store, "test-worker")

    JobExecutor(store, kinds).execute(job)

    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"], row["errors"]) == ("completed", 1, None)
    assert payment_row(conn, payment_id)["status"] == "pending"
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1
    # A 500 that began executing is saved: its retry is a replay, then (no intent found)
    # the next generation's key creates.
    expected = 3 if fault is api_error else 2
    assert standin.admin.stats()["requests"]["by_route"]["POST /v1/payment_intents"] == expected


def test_a_job_of_an_unknown_kind_is_discarded_at_max_attempts_with_nothing_else_done(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, currency=CONFIGURED)
    (payment_job,) = store.job_get_available(1, "test-worker")  # keeps it out of the way
    conn.execute(
        "INSERT INTO metadata.river_job (queue, kind, args, max_attempts)"
        " VALUES (%s, 'send_invoice', %s, 2)",
        (QUEUE, json.dumps({"payment_id": str(payment_id)})),
    )
    job = claim(store, "test-worker")
    executor.execute(job)
    assert job_row(conn, job.id)["state"] == "retryable"

    job = make_due_and_claim(conn, store, job.id)
    executor.execute(job)

    row = job_row(conn, job.id)
    assert (row["state"], row["attempt"]) == ("discarded", 2)
    assert [e["error"] for e in row["errors"]] == [
        "no handler registered for job kind 'send_invoice'"
    ] * 2
    # No effect is registered for the kind: a payment its args happen to name is untouched.
    assert payment_row(conn, payment_id)["status"] == "pending_intent"
    assert job_row(conn, payment_job.id)["state"] == "running"
    assert standin.admin.stats()["requests"]["total"] == 0


def test_an_unexpected_exception_at_max_attempts_still_fails_the_payment(
    conn: psycopg.Connection, store: Store, standin: StandinProcess
) -> None:
    """Before the given-up effect was the database's, only a JobFailure naming its
    payment failed it: a bug on the last attempt left the payment pending_intent."""
    conn.execute("UPDATE payments.config SET max_attempts = 1")
    payment_id = insert_payment(conn, currency=CONFIGURED)

    def buggy(job: Job) -> Done:
        raise KeyError("a bug in the handler")

    kinds = Kinds()
    kinds.register("create_payment_intent", buggy, given_up=handlers.PAYMENT_GIVEN_UP)
    job = claim(store, "test-worker")

    JobExecutor(store, kinds).execute(job)

    row = job_row(conn, job.id)
    assert row["state"] == "discarded"
    (entry,) = row["errors"]
    assert entry["error"] == "KeyError: 'a bug in the handler'"
    assert "caller_message" not in entry
    stored = payment_row(conn, payment_id)
    assert (stored["status"], stored["error_message"]) == ("failed", caller_reason(payment_id))


def test_the_backoff_counts_errors_not_attempts(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    """River's policy: len(errors) + 1. A job on its 4th attempt with one error so far
    (attempts that ended without an error, as River's snoozes once did) waits 2^4 s, not 4^4."""
    payment_id = insert_payment(conn, currency=CONFIGURED)
    conn.execute(
        "UPDATE metadata.river_job SET attempt = 3,"
        " errors = ARRAY[jsonb_build_object('at', now(), 'attempt', 1, 'error', 'x', 'trace', '')]"
        " WHERE args->>'payment_id' = %s",
        (str(payment_id),),
    )
    job = claim(store, "test-worker")
    assert (job.attempt, job.error_count) == (4, 1)
    standin.admin.script([api_error()])
    before = db_now(conn)

    executor.execute(job)

    after = db_now(conn)
    row = job_row(conn, job.id)
    assert row["state"] == "retryable"
    assert len(row["errors"]) == 2
    assert before + timedelta(seconds=0.9 * 16) <= row["scheduled_at"]
    assert row["scheduled_at"] <= after + timedelta(seconds=1.1 * 16)


def test_a_request_still_running_at_stripe_makes_the_job_retry_not_fail(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    standin: StandinProcess,
) -> None:
    """A rescued attempt can meet its predecessor's request still running at Stripe,
    which answers 409 idempotency_key_in_use: a conflict to retry, not a refusal."""
    payment_id = insert_payment(conn, currency=CONFIGURED)
    job = claim(store, "test-worker")
    payment = store.job_payment_get(job)
    assert payment is not None
    standin.admin.configure(latency_ms=3000)
    predecessor = threading.Thread(target=gateway.create_payment_intent, args=(payment,))
    predecessor.start()
    try:
        deadline = time.monotonic() + 10
        while not any(k["status"] is None for k in standin.admin.idempotency_keys()):
            assert time.monotonic() < deadline, "the first request never reached the stand-in"
            time.sleep(0.01)

        executor.execute(job)

        row = job_row(conn, job.id)
        assert row["state"] == "retryable"
        assert "another in-progress request" in row["errors"][0]["error"]
        assert payment_row(conn, payment_id)["status"] == "pending_intent"
    finally:
        predecessor.join(timeout=10)
    assert len(standin.admin.intents_with_metadata("payment_id", str(payment_id))) == 1
