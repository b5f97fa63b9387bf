"""Stripe's real idempotency rules against the worker: a saved 500 replayed to every retry
of its key, keys forgotten after 24 h. The worker searches for the payment's intent and
adopts it, and only when there is none creates one under the next generation's key."""

from __future__ import annotations

from collections import Counter
from typing import Any
from uuid import UUID

import psycopg
import pytest
import stripe

from stripe_standin.client import api_error, create_then_5xx, lose_response
from stripe_standin.process import StandinProcess
from tests.integration.conftest import API_KEY
from tests.integration.rows import (
    CONFIGURED,
    claim,
    insert_payment,
    job_id_of,
    job_row,
    make_due_and_claim,
    payment_row,
)
from worker import handlers
from worker.executor import JobExecutor
from worker.handlers import caller_reason
from worker.jobs import Kinds
from worker.store import Store
from worker.stripe_gateway import StripeGateway, StripeSettings

CREATE = "POST /v1/payment_intents"
SEARCH = "GET /v1/payment_intents/search"


def key_of(payment_id: UUID, generation: int = 0) -> str:
    base = f"payment-worker:create_payment_intent:{payment_id}"
    return base if generation == 0 else f"{base}:{generation}"


def requests_of(standin: StandinProcess, payment_id: UUID) -> list[tuple[str, str | None, str]]:
    """(route, idempotency key, outcome) of each create and search about the payment."""
    return [
        ("create" if r["route"] == CREATE else "search", r["idempotency_key"], r["outcome"])
        for r in standin.admin.requests(str(payment_id))
    ]


def intents_of(standin: StandinProcess, payment_id: UUID) -> list[dict[str, Any]]:
    return [
        e
        for e in standin.admin.payment_intents()
        if e["payment_intent"]["metadata"].get("payment_id") == str(payment_id)
    ]


def first_attempt_hours_ago(conn: psycopg.Connection, job_id: int, hours: float) -> None:
    """The workers were down: the job (so its first attempt) is `hours` old."""
    conn.execute(
        "UPDATE metadata.river_job SET created_at = now() - make_interval(hours => %s)"
        " WHERE id = %s",
        (hours, job_id),
    )


def sdk_client(standin: StandinProcess) -> stripe.StripeClient:
    return stripe.StripeClient(API_KEY, base_addresses={"api": standin.url}, max_network_retries=0)


def stored_intent(conn: psycopg.Connection, payment_id: UUID) -> tuple[str, str | None]:
    row = payment_row(conn, payment_id)
    return row["status"], row["provider_payment_id"]


def test_a_saved_500_replayed_while_the_intent_exists_is_adopted(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([create_then_5xx()])  # made the intent, answered (and saved) 500
    job = claim(store, "test-worker")
    executor.execute(job)
    assert job_row(conn, job.id)["state"] == "retryable"
    (made,) = intents_of(standin, payment_id)

    executor.execute(make_due_and_claim(conn, store, job.id))

    assert job_row(conn, job.id)["state"] == "completed"
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert (
        payment_row(conn, payment_id)["provider_client_secret"]
        == (made["payment_intent"]["client_secret"])
    )
    assert intents_of(standin, payment_id) == [made]
    assert requests_of(standin, payment_id) == [
        ("create", key_of(payment_id), "created"),
        ("create", key_of(payment_id), "replay"),
        ("search", None, "ok"),
    ]


def test_with_the_sdk_retry_the_replayed_500_is_adopted_in_the_same_attempt(
    conn: psycopg.Connection, store: Store, standin: StandinProcess
) -> None:
    gateway = StripeGateway(
        StripeSettings(API_KEY, standin.url, connect_timeout=2, read_timeout=5, network_retries=2)
    )
    kinds = Kinds()
    handlers.register(kinds, store, gateway, "USD")
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([create_then_5xx()])
    job = claim(store, "test-worker")

    JobExecutor(store, kinds).execute(job)

    assert (job_row(conn, job.id)["state"], job_row(conn, job.id)["errors"]) == ("completed", None)
    (made,) = intents_of(standin, payment_id)
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    # The replayed 500 is not asked again: the same key would only replay it again.
    assert [r[2] for r in requests_of(standin, payment_id)] == ["created", "replay", "ok"]


def test_a_saved_500_and_no_intent_creates_one_under_the_next_key(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([api_error()])  # saved 500, nothing made
    job = claim(store, "test-worker")
    executor.execute(job)

    executor.execute(make_due_and_claim(conn, store, job.id))

    assert job_row(conn, job.id)["state"] == "completed"
    (made,) = intents_of(standin, payment_id)
    assert made["idempotency_key"] == key_of(payment_id, 1)
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert requests_of(standin, payment_id) == [
        ("create", key_of(payment_id), "error"),
        ("create", key_of(payment_id), "replay"),
        ("search", None, "ok"),
        ("create", key_of(payment_id, 1), "created"),
    ]


def test_while_search_lags_the_next_key_is_the_same_so_stripe_replays_it(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    """Search cannot see an intent made a moment ago; the generation's key is fixed, so
    the retry that cannot find it sends the key that made it and gets it replayed."""
    standin.admin.configure(search_lag_ms=600_000)
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([api_error(), lose_response()])
    job = claim(store, "test-worker")
    executor.execute(job)  # 500 saved on the first key
    executor.execute(make_due_and_claim(conn, store, job.id))  # next key: made, answer lost
    assert job_row(conn, job.id)["state"] == "retryable"

    executor.execute(make_due_and_claim(conn, store, job.id))

    (made,) = intents_of(standin, payment_id)
    assert made["idempotency_key"] == key_of(payment_id, 1)
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert requests_of(standin, payment_id)[-3:] == [
        ("create", key_of(payment_id), "replay"),
        ("search", None, "ok"),
        ("create", key_of(payment_id, 1), "replay"),
    ]


def test_a_first_attempt_24_h_old_adopts_the_intent_without_a_create(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([lose_response()])  # made it, the answer never came
    job = claim(store, "test-worker")
    executor.execute(job)
    assert job_row(conn, job.id)["state"] == "retryable"
    # A day later: Stripe forgot the key, which would now make a second intent.
    assert standin.admin.expire_keys(older_than_seconds=0) == 1
    first_attempt_hours_ago(conn, job.id, 25)

    executor.execute(make_due_and_claim(conn, store, job.id))

    (made,) = intents_of(standin, payment_id)
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert requests_of(standin, payment_id) == [
        ("create", key_of(payment_id), "lost"),
        ("search", None, "ok"),
    ]


def test_a_first_attempt_24_h_old_and_no_intent_creates_once_under_the_next_key(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    first_attempt_hours_ago(conn, job_id_of(conn, payment_id), 25)
    job = claim(store, "test-worker")

    executor.execute(job)

    (made,) = intents_of(standin, payment_id)
    assert made["idempotency_key"] == key_of(payment_id, 1)
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert requests_of(standin, payment_id) == [
        ("search", None, "ok"),
        ("create", key_of(payment_id, 1), "created"),
    ]


@pytest.mark.parametrize("wrong", [(2499, "usd"), (2500, "eur")], ids=["amount", "currency"])
def test_an_intent_that_does_not_match_fails_the_payment_and_charges_nothing(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    standin: StandinProcess,
    wrong: tuple[int, str],
) -> None:
    amount, currency = wrong
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    other = sdk_client(standin).v1.payment_intents.create(
        {"amount": amount, "currency": currency, "metadata": {"payment_id": str(payment_id)}}
    )
    first_attempt_hours_ago(conn, job_id_of(conn, payment_id), 25)
    job = claim(store, "test-worker")

    executor.execute(job)

    row = job_row(conn, job.id)
    assert row["state"] == "discarded"
    (error,) = row["errors"]
    assert other.id in error["error"] and "not adopted" in error["error"]
    stored = payment_row(conn, payment_id)
    assert (stored["status"], stored["provider_payment_id"]) == ("failed", None)
    assert stored["error_message"] == caller_reason(payment_id)
    assert len(intents_of(standin, payment_id)) == 1
    assert Counter(r[0] for r in requests_of(standin, payment_id)) == {"create": 1, "search": 1}


def test_giving_up_on_the_last_attempt_adopts_what_a_lost_answer_made(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, standin: StandinProcess
) -> None:
    conn.execute("UPDATE payments.config SET max_attempts = 1")
    payment_id = insert_payment(conn, 2500, currency=CONFIGURED)
    standin.admin.script([lose_response()])
    job = claim(store, "test-worker")
    assert job.attempt == job.max_attempts == 1

    executor.execute(job)

    (made,) = intents_of(standin, payment_id)
    assert job_row(conn, job.id)["state"] == "completed"
    assert stored_intent(conn, payment_id) == ("pending", made["payment_intent"]["id"])
    assert [r[:2] for r in requests_of(standin, payment_id)] == [
        ("create", key_of(payment_id)),
        ("search", None),
    ]
