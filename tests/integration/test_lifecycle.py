"""The payment state machine: Stripe's current state applied from events delivered in any
order and more than once, the observation tokens that keep an older state from winning a
race, the guard's transitions, and the NOTIFY of every status change."""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Iterator
from typing import Any
from uuid import UUID

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests import pg
from tests.integration import lifecycle as lc
from tests.integration.rows import claim, insert_payment, payment_row
from worker.executor import JobExecutor
from worker.models import ObservedIntent
from worker.store import Store
from worker.stripe_gateway import StripeFailure, StripeGateway


@pytest.fixture
def stripe() -> Iterator[lc.InProcessStandin]:
    standin = lc.InProcessStandin()
    yield standin
    standin.close()


@pytest.fixture
def gateway(stripe: lc.InProcessStandin) -> StripeGateway:
    return lc.gateway_for(stripe.url)


@pytest.fixture
def executor(store: Store, gateway: StripeGateway) -> JobExecutor:
    return lc.executor_for(store, gateway)


def created_payment(
    conn: psycopg.Connection, store: Store, executor: JobExecutor
) -> tuple[UUID, str]:
    """A payment (the test's login owns it) whose create job has stored its PaymentIntent
    (requires_payment_method)."""
    payment_id = insert_payment(conn, 2500, owner_role=pg.USER)
    assert lc.run_available(store, executor) == 1
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_status"], row["provider_synced_at"]) == (
        "pending",
        "requires_payment_method",
        None,
    )
    return payment_id, lc.intent_id_of(conn, payment_id)


# Stripe's transitions of the two lifecycles, each with the event it sends.
HAPPY = [
    ("requires_payment_method", "payment_intent.created", {}),
    ("requires_action", "payment_intent.requires_action", {}),
    ("processing", "payment_intent.processing", {}),
    ("succeeded", "payment_intent.succeeded", {}),
]
DECLINE_THEN_SUCCESS = [
    ("requires_payment_method", "payment_intent.created", {}),
    (
        "requires_payment_method",
        "payment_intent.payment_failed",
        {"last_payment_error": lc.DECLINE},
    ),
    ("processing", "payment_intent.processing", {}),
    ("succeeded", "payment_intent.succeeded", {}),
]
OURS = {
    "requires_payment_method": "pending",
    "requires_action": "pending",
    "processing": "processing",
    "succeeded": "succeeded",
}


@pytest.mark.parametrize("lifecycle", [HAPPY, DECLINE_THEN_SUCCESS], ids=["happy", "decline"])
def test_every_delivery_order_with_duplicates_ends_in_stripes_final_state(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    lifecycle: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """Each order in which the four events can arrive. An event exists once Stripe made its
    transition, so Stripe is at least at the latest transition delivered so far; after
    every delivery (and a duplicate of each, one from the backfill) the payment shows
    Stripe's state at that moment."""
    for order in itertools.permutations(range(len(lifecycle))):
        payment_id, intent_id = created_payment(conn, store, executor)
        events: dict[int, dict[str, Any]] = {}
        reached = -1
        for step in order:
            while reached < step:
                reached += 1
                status, type_, changes = lifecycle[reached]
                events[reached] = lc.event(stripe.move(intent_id, status, **changes), type_)
            assert lc.record(conn, events[step]) == "stored"
            assert lc.record(conn, events[step]) == "duplicate"
            assert lc.record(conn, events[step], "backfill") == "duplicate"
            assert lc.run_available(store, executor) == 1
            assert lc.event_row(conn, events[step]["id"])["outcome"] == "applied"
            now_at = lifecycle[reached][0]
            assert lc.status_of(conn, payment_id) == OURS[now_at], (order, step)

        row = payment_row(conn, payment_id)
        assert (row["status"], row["provider_status"], row["amount_received"]) == (
            "succeeded",
            "succeeded",
            2500,
        ), order
        declined = any("last_payment_error" in changes for _, _, changes in lifecycle)
        kept = (row["last_payment_error_code"], row["last_payment_error_decline_code"])
        assert kept == (("card_declined", "insufficient_funds") if declined else (None, None))


def test_a_decline_is_not_the_end_and_stays_the_last_error_after_success(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)

    # Phase 1: declined. Stripe asks for another payment method: still pending.
    declined = stripe.move(intent_id, "requires_payment_method", last_payment_error=lc.DECLINE)
    lc.record(conn, lc.event(declined, "payment_intent.payment_failed"))
    lc.run_available(store, executor)
    shown = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert shown is not None
    assert shown[0]["status"] == "pending"
    assert shown[0]["provider_status"] == "requires_payment_method"
    assert shown[0]["last_payment_error"] == {
        "message": "Your card has insufficient funds.",
        "code": "card_declined",
        "decline_code": "insufficient_funds",
    }

    # Phase 2: another card succeeds; Stripe clears last_payment_error, we keep the decline.
    succeeded = stripe.move(intent_id, "succeeded", last_payment_error=None)
    lc.record(conn, lc.event(succeeded, "payment_intent.succeeded"))
    lc.run_available(store, executor)
    shown = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert shown is not None
    got = shown[0]
    assert (got["status"], got["provider_status"], got["amount_received"]) == (
        "succeeded",
        "succeeded",
        25,
    )
    assert got["last_payment_error"]["decline_code"] == "insufficient_funds"
    assert got["provider_synced_at"] is not None


def test_succeeded_then_a_stale_processing_stays_succeeded(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    pool: ConnectionPool,
) -> None:
    """Two workers, two events of one payment: the older observation is written last."""
    payment_id, intent_id = created_payment(conn, store, executor)
    older, newer = Store(pool), Store(pool)
    try:
        lc.record(conn, lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing"))
        job_a = claim(older, "worker-a")
        # Worker A takes its token and reads `processing`, then stalls.
        token_a = older.observation_token()
        seen_a = gateway.retrieve_payment_intent(intent_id)
        assert seen_a.status == "processing"

        lc.record(conn, lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded"))
        job_b = claim(newer, "worker-b")
        token_b = newer.observation_token()
        seen_b = gateway.retrieve_payment_intent(intent_id)
        assert token_b > token_a
        assert newer.job_payment_observe(job_b, token_b, seen_b).result == "written"
        assert lc.status_of(conn, payment_id) == "succeeded"

        # A's write arrives last: older than the stored observation, not written.
        late = older.job_payment_observe(job_a, token_a, seen_a)
        assert (late.completed, late.result) == (True, "stale")
        row = payment_row(conn, payment_id)
        assert (row["status"], row["provider_status"], row["provider_synced_at"]) == (
            "succeeded",
            "succeeded",
            token_b,
        )
        assert conn.execute(
            "SELECT array_agg(outcome ORDER BY outcome) FROM payments.stripe_events"
        ).fetchone() == (["applied", "applied"],)
    finally:
        older.close()
        newer.close()


def test_the_older_observation_written_first_is_overwritten_by_the_newer(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    pool: ConnectionPool,
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    first, second = Store(pool), Store(pool)
    try:
        lc.record(conn, lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing"))
        lc.record(conn, lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing"))
        job_a, job_b = claim(first, "worker-a"), claim(second, "worker-b")
        token_a = first.observation_token()
        seen_a = gateway.retrieve_payment_intent(intent_id)
        stripe.move(intent_id, "succeeded")
        token_b = second.observation_token()
        seen_b = gateway.retrieve_payment_intent(intent_id)

        assert first.job_payment_observe(job_a, token_a, seen_a).result == "written"
        assert lc.status_of(conn, payment_id) == "processing"
        assert second.job_payment_observe(job_b, token_b, seen_b).result == "written"
        assert lc.status_of(conn, payment_id) == "succeeded"
    finally:
        first.close()
        second.close()


def test_a_newer_observation_out_of_a_final_status_is_refused_and_the_event_applied(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    caplog: pytest.LogCaptureFixture,
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    lc.record(conn, lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded"))
    lc.run_available(store, executor)
    assert lc.status_of(conn, payment_id) == "succeeded"

    # Whatever Stripe says next (it never does this), succeeded is final.
    evt = lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing")
    lc.record(conn, evt)
    lc.run_available(store, executor)

    assert lc.status_of(conn, payment_id) == "succeeded"
    row = lc.event_row(conn, evt["id"])
    assert row["outcome"] == "applied"
    assert "which is succeeded: final, not changed" in row["error"]
    assert any("not applied" in r.getMessage() for r in caplog.records)


def test_an_event_of_another_intent_is_ignored_with_its_reason(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    other = dict(stripe.intent(intent_id), id="pi_someoneelse")
    evt = lc.event(other, "payment_intent.succeeded")
    assert lc.record(conn, evt) == "stored"  # ours by metadata.payment_id
    lc.run_available(store, executor)

    row = lc.event_row(conn, evt["id"])
    assert row["outcome"] == "ignored"
    assert (
        row["error"] == f"PaymentIntent pi_someoneelse is not payment {payment_id}'s ({intent_id})"
    )
    assert lc.status_of(conn, payment_id) == "pending"


def test_an_intent_stripe_does_not_have_is_ignored_with_its_reason(
    conn: psycopg.Connection, store: Store, executor: JobExecutor
) -> None:
    payment_id = insert_payment(conn, 2500)
    claim(store, "slow-creator")  # its create job still runs: the event comes first
    evt = lc.event(
        {
            "id": "pi_missing",
            "object": "payment_intent",
            "metadata": {"payment_id": str(payment_id)},
        },
        "payment_intent.created",
    )
    lc.record(conn, evt)
    lc.run_available(store, executor)

    row = lc.event_row(conn, evt["id"])
    assert (row["outcome"], row["error"]) == ("ignored", "Stripe has no PaymentIntent pi_missing")
    assert lc.status_of(conn, payment_id) == "pending_intent"


def test_an_event_before_the_create_job_stored_its_intent_adopts_it(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
) -> None:
    """The create job's answer is late (or lost): the event's fresh intent is the payment's
    when Stripe says it was made for it, with its amount and currency."""
    payment_id = insert_payment(conn, 2500)
    create_job = claim(store, "slow-creator")
    payment = store.job_payment_get(create_job)
    assert payment is not None
    made = gateway.create_payment_intent(payment)
    lc.record(conn, lc.event(stripe.intent(made.provider_payment_id), "payment_intent.created"))

    lc.run_available(store, executor)
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_payment_id"], row["provider_client_secret"]) == (
        "pending",
        made.provider_payment_id,
        made.client_secret,
    )
    # The create job finishes without a second intent and without touching the payment.
    executor.execute(create_job)
    assert len(stripe.app.intents) == 1
    assert payment_row(conn, payment_id)["provider_payment_id"] == made.provider_payment_id


def test_an_apply_job_given_up_leaves_its_event_unapplied_with_the_reason(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    _, intent_id = created_payment(conn, store, executor)
    evt = lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing")
    lc.record(conn, evt)
    job = claim(store)
    error = {"at": "2026-12-01T00:00:00Z", "attempt": 1, "error": "Stripe is down", "trace": ""}
    assert store.job_discard(job, error)

    row = lc.event_row(conn, evt["id"])
    assert row["outcome"] == "pending"
    assert row["error"] == f"its apply job {job.id} was given up: Stripe is down"


def test_the_observation_write_is_fenced_by_the_jobs_lease(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    lc.record(conn, lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing"))
    job = claim(store)
    token = store.observation_token()
    seen = ObservedIntent(
        id=intent_id,
        status="succeeded",
        amount=2500,
        currency="usd",
        amount_received=2500,
        metadata_payment_id=str(payment_id),
        last_payment_error=None,
    )
    forged = dataclasses.replace(job, attempt=job.attempt + 1)
    assert store.job_payment_observe(forged, token, seen).completed is False
    assert lc.status_of(conn, payment_id) == "pending"
    # A token from the future is refused outright: it would freeze the row.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="observation_token"):
        conn.execute(
            "SELECT * FROM payments.job_payment_observe(%s, %s, %s, now() + interval '1 hour',"
            ' \'{"id": "pi_x", "status": "succeeded"}\')',
            (job.id, job.attempt, job.lease_token),
        )


class Rollback(Exception):
    """Raised to roll a test's transaction back."""


def test_a_retrieve_is_retried_at_once_after_a_5xx_and_a_404_is_not(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    _, intent_id = created_payment(conn, store, executor)
    asked = stripe.fail_retrieves(1)
    patient = lc.gateway_for(stripe.url, network_retries=2)

    assert patient.retrieve_payment_intent(intent_id).status == "requires_payment_method"
    assert asked == [f"/v1/payment_intents/{intent_id}"] * 2

    with pytest.raises(StripeFailure) as missing:
        patient.retrieve_payment_intent("pi_missing")
    assert (missing.value.not_found, missing.value.permanent) == (True, True)
    assert asked[2:] == ["/v1/payment_intents/pi_missing"]


def test_an_event_whose_intent_stripe_cannot_read_now_waits_for_the_retry(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    evt = lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing")
    lc.record(conn, evt)
    stripe.fail_retrieves(None)
    lc.run_available(store, executor)

    job = conn.execute(
        "SELECT state, errors[1]->>'error' FROM metadata.river_job WHERE id = %s",
        (lc.apply_job_id(conn, evt["id"]),),
    ).fetchone()
    assert job is not None
    assert job[0] == "retryable"
    assert "Sorry, something went wrong." in job[1]
    assert lc.event_row(conn, evt["id"])["outcome"] == "pending"
    assert lc.status_of(conn, payment_id) == "pending"


# --- the guard ----------------------------------------------------------------------------------

STATUSES = (
    "pending_intent",
    "pending",
    "processing",
    "requires_capture",
    "succeeded",
    "canceled",
    "failed",
)
ALLOWED = {("pending_intent", s) for s in STATUSES if s != "pending_intent"} | {
    ("pending", "processing"),
    ("pending", "requires_capture"),
    ("pending", "succeeded"),
    ("pending", "canceled"),
    ("processing", "pending"),
    ("processing", "requires_capture"),
    ("processing", "succeeded"),
    ("processing", "canceled"),
    ("requires_capture", "processing"),
    ("requires_capture", "succeeded"),
    ("requires_capture", "canceled"),
}


def test_the_guard_allows_exactly_the_transitions_stripe_makes(conn: psycopg.Connection) -> None:
    payment_id = insert_payment(conn)
    refused: dict[tuple[str, str], str] = {}
    allowed: set[tuple[str, str]] = set()
    for old, new in itertools.product(STATUSES, STATUSES):
        if old == new:
            continue
        with pytest.raises(Rollback), conn.transaction():
            if old != "pending_intent":
                conn.execute(
                    "UPDATE payments.transactions SET status = %s, error_message = 'x',"
                    " provider_payment_id = 'pi_1', provider_client_secret = 'pi_1_secret_x'"
                    " WHERE id = %s",
                    (old, payment_id),
                )
            try:
                conn.execute(
                    "UPDATE payments.transactions SET status = %s, error_message = 'x',"
                    " provider_payment_id = 'pi_1', provider_client_secret = 'pi_1_secret_x'"
                    " WHERE id = %s",
                    (new, payment_id),
                )
                allowed.add((old, new))
            except psycopg.errors.RaiseException as exc:
                refused[(old, new)] = str(exc)
            raise Rollback
    assert allowed == ALLOWED
    assert refused.keys() == set(itertools.permutations(STATUSES, 2)) - ALLOWED
    assert all(
        f"status cannot go from {old} to {new}" in msg for (old, new), msg in refused.items()
    )
    assert lc.status_of(conn, payment_id) == "pending_intent"


@pytest.mark.parametrize(
    ("old", "new", "detail"),
    [
        ("succeeded", "processing", "succeeded is final."),
        ("canceled", "pending", "canceled is final."),
        ("requires_capture", "pending", "Stripe makes no such transition."),
    ],
)
def test_the_guard_says_why(conn: psycopg.Connection, old: str, new: str, detail: str) -> None:
    payment_id = insert_payment(conn)
    conn.execute(
        "UPDATE payments.transactions SET status = %s, provider_payment_id = 'pi_1',"
        " provider_client_secret = 'pi_1_secret_x' WHERE id = %s",
        (old, payment_id),
    )
    with pytest.raises(psycopg.errors.RaiseException) as err:
        conn.execute(
            "UPDATE payments.transactions SET status = %s WHERE id = %s", (new, payment_id)
        )
    assert f"status cannot go from {old} to {new}" in str(err.value)
    assert err.value.diag.message_detail == detail


# --- NOTIFY payments.payment_status ---------------------------------------------------------------


def test_every_status_change_notifies_once_and_nothing_else_does(
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
) -> None:
    with lc.status_listener(database_url) as listener:
        payment_id, intent_id = created_payment(conn, store, executor)
        for status, type_ in [
            ("requires_action", "payment_intent.requires_action"),  # pending -> pending
            ("processing", "payment_intent.processing"),
            ("processing", "payment_intent.processing"),  # a second event, same state
            ("succeeded", "payment_intent.succeeded"),
        ]:
            lc.record(conn, lc.event(stripe.move(intent_id, status), type_))
            lc.run_available(store, executor)

        got = lc.statuses_before_sentinel(listener, conn)
    assert got == [
        {"payment_id": str(payment_id), "status": status}
        for status in ("pending", "processing", "succeeded")
    ]


def test_a_rolled_back_status_change_notifies_nothing(
    conn: psycopg.Connection, database_url: str
) -> None:
    payment_id = insert_payment(conn)
    with lc.status_listener(database_url) as listener:
        with pytest.raises(Rollback), conn.transaction():
            conn.execute(
                "UPDATE payments.transactions SET status = 'failed', error_message = 'x'"
                " WHERE id = %s",
                (payment_id,),
            )
            raise Rollback
        assert lc.statuses_before_sentinel(listener, conn) == []
