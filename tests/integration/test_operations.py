"""capture_payment, cancel_payment and refund_payment end to end: the RPCs, a whole worker,
the real SDK against the stand-in. Events reach the database as the webhook receiver records
them (payments.stripe_event_record), taken from the stand-in's own list; the expired
authorisation's are signed and delivered by the stand-in to the real receiver."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import psycopg
import pytest
import stripe
from psycopg import sql

from stripe_standin.process import StandinProcess
from tests import pg
from tests.integration.conftest import MakeRole, role_url
from tests.integration.lifecycle import record
from tests.integration.standin_flows import sdk_client, wait_until
from tests.webhook_support import SECRET, TEST_KEY, Receiver

CREATE = "SELECT create_payment_intent_sync(%s, %s, %s)"

# A whole worker (tests/integration/conftest.py) answers every request.
pytestmark = pytest.mark.usefixtures("running_worker")


@pytest.fixture
def sdk(standin: StandinProcess) -> Iterator[stripe.StripeClient]:
    """The customer's (and the dashboard's) side of Stripe."""
    with sdk_client(standin.url) as client:
        yield client


def call(database_url: str, query: str, *args: Any, role: str | None = None) -> Any:
    """One RPC on a session of its own, closed after: its loopback connection with it."""
    with psycopg.connect(database_url, autocommit=True) as session:
        pg.money_as_decimal(session)
        if role is not None:
            session.execute(sql.SQL("SET ROLE {}").format(sql.Identifier(role)))
        row = session.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def operate(database_url: str, query: str, *args: Any) -> Any:
    """An operator's RPC: the admin is one only once it acts as payment_operator."""
    return call(database_url, query, *args, role="payment_operator")


def deliver(conn: psycopg.Connection, standin: StandinProcess) -> None:
    """Every event the stand-in made, recorded as the receiver records a webhook (a
    duplicate changes nothing); the worker applies them."""
    for event in standin.admin.events():
        record(conn, event)


def payment(conn: psycopg.Connection, payment_id: str) -> dict[str, Any]:
    row = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert row is not None and row[0] is not None
    return dict(row[0])


def reaches(
    conn: psycopg.Connection, standin: StandinProcess, payment_id: str, status: str
) -> dict[str, Any]:
    """The payment once Stripe's events have brought it to `status`."""
    deliver(conn, standin)
    wait_until(lambda: payment(conn, payment_id)["status"] == status, f"payment {status}")
    return payment(conn, payment_id)


def intent_of(standin: StandinProcess, payment_id: str) -> dict[str, Any]:
    (intent,) = standin.admin.intents_with_metadata("payment_id", payment_id)
    return intent


def paid(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    capture_method: str,
) -> tuple[str, str]:
    """A payment the customer paid with a card: (payment_id, intent id), in requires_capture
    (manual) or succeeded (automatic) in the database too."""
    created = call(database_url, CREATE, 2500, "Test payment $25.00", capture_method)
    intent_id = intent_of(standin, created["payment_id"])["id"]
    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    wanted = "requires_capture" if capture_method == "manual" else "succeeded"
    reaches(conn, standin, created["payment_id"], wanted)
    # The status can come from the first event while the others (and any read of the intent
    # they cause) are still being applied; a dashboard change made now would race them.
    wait_until(lambda: not jobs_open(conn), "every job finished")
    return created["payment_id"], intent_id


def jobs_open(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return conn.execute(
        "SELECT kind, state FROM metadata.river_job"
        " WHERE state NOT IN ('completed', 'discarded', 'cancelled')"
    ).fetchall()


def operation_ids(conn: psycopg.Connection, payment_id: str) -> list[UUID]:
    rows = conn.execute(
        "SELECT id FROM payments.payment_operations WHERE payment_id = %s ORDER BY created_at",
        (payment_id,),
    ).fetchall()
    return [r[0] for r in rows]


def keys_held(standin: StandinProcess) -> set[str]:
    return {k["key"] for k in standin.admin.idempotency_keys()}


def capture_before_at_stripe(sdk: stripe.StripeClient, intent_id: str) -> datetime:
    """The authorisation's deadline as Stripe gives it: the charge's card details."""
    charge = sdk.v1.payment_intents.retrieve(intent_id, {"expand": ["latest_charge"]}).latest_charge
    assert isinstance(charge, stripe.Charge), charge  # expanded, as Stripe does
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert card is not None and card.capture_before is not None
    return datetime.fromtimestamp(card.capture_before, UTC)


def shown_time(value: str | None) -> datetime | None:
    """A timestamptz as get_payment shows it (JSON text)."""
    return None if value is None else datetime.fromisoformat(value)


# --- capture ------------------------------------------------------------------------------------


def test_a_manual_payment_waits_authorised_and_is_captured_in_full(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "manual")
    authorised = payment(conn, payment_id)
    assert authorised["capture_method"] == "manual"
    assert (authorised["amount_capturable"], authorised["amount_received"]) == (
        Decimal("25.00"),
        Decimal("0.00"),
    )
    assert intent_of(standin, payment_id)["capture_method"] == "manual"
    # The very deadline Stripe gave the authorisation, to the second.
    assert shown_time(authorised["capture_before"]) == capture_before_at_stripe(sdk, intent_id)

    captured = operate(database_url, "SELECT capture_payment(%s)", payment_id)

    assert captured["status"] == "succeeded"
    assert (captured["amount_received"], captured["amount_capturable"]) == (
        Decimal("25.00"),
        Decimal("0.00"),
    )
    at_stripe = sdk.v1.payment_intents.retrieve(intent_id)
    assert (at_stripe.status, at_stripe.amount_received, at_stripe.amount_capturable) == (
        "succeeded",
        2500,
        0,
    )
    (operation_id,) = operation_ids(conn, payment_id)
    assert f"payment-worker:capture_payment:{operation_id}" in keys_held(standin)


def test_a_partial_capture_takes_that_much_and_releases_the_rest(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "manual")

    captured = operate(database_url, "SELECT capture_payment(%s, %s)", payment_id, 1000)

    assert (captured["status"], captured["amount_received"], captured["amount_capturable"]) == (
        "succeeded",
        Decimal("10.00"),
        Decimal("0.00"),
    )
    at_stripe = sdk.v1.payment_intents.retrieve(intent_id)
    assert (at_stripe.amount_received, at_stripe.amount_capturable) == (1000, 0)
    assert standin.admin.refunds() == []  # released, not refunded
    # What is left to refund is what was captured.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="1000 left to refund"):
        operate(database_url, "SELECT refund_payment(%s, %s)", payment_id, 1001)


# --- an authorisation Stripe gives up ------------------------------------------------------------

# Long enough for the payment to be seen authorised first, short enough to wait for.
AUTHORIZATION_WINDOW = 3.0


@pytest.fixture
def receiver(tmp_path: Path, database_url: str, login_role: MakeRole) -> Iterator[Receiver]:
    """The real webhook receiver (`python -m webhooks`) on this test's database, logged in
    as a member of payment_webhook only."""
    env = {
        "DATABASE_URL": role_url(database_url, login_role("payment_webhook")),
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": SECRET,
    }
    with Receiver(env, tmp_path / "receiver.log", tmp_path / "metrics") as running:
        yield running


def test_an_authorisation_stripe_lets_expire_cancels_the_payment_through_its_webhook(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    receiver: Receiver,
) -> None:
    """Stripe cancels an authorisation nobody captured by its capture_before (reason
    `automatic`) and says so with payment_intent.canceled: signed, delivered to the
    receiver, recorded, applied by the worker. No capture, cancel or reconciliation."""
    standin.admin.configure_webhooks(
        url=f"http://127.0.0.1:{receiver.port}/webhooks/stripe",
        secret=SECRET,
        retry_base_seconds=0.2,
    )
    standin.admin.set_authorization_window(AUTHORIZATION_WINDOW)
    created = call(database_url, CREATE, 2500, "Authorise now", "manual")
    payment_id = created["payment_id"]
    intent_id = intent_of(standin, payment_id)["id"]

    sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    deadline = capture_before_at_stripe(sdk, intent_id)

    authorised = wait_until(
        lambda: (shown := payment(conn, payment_id))["status"] != "pending" and shown,
        "the payment authorised",
    )
    assert authorised["status"] == "requires_capture", (
        f"the authorisation was not seen before it expired at {deadline}: {authorised}"
    )
    assert shown_time(authorised["capture_before"]) == deadline
    assert authorised["amount_capturable"] == Decimal("25.00")

    # Nobody captures it: the stand-in expires it at its deadline.
    canceled = wait_until(
        lambda: (shown := payment(conn, payment_id))["status"] == "canceled" and shown,
        "the payment canceled",
        timeout=AUTHORIZATION_WINDOW + 10,
    )

    assert datetime.now(UTC) >= deadline
    assert (canceled["provider_status"], canceled["cancellation_reason"]) == (
        "canceled",
        "automatic",
    )
    assert (canceled["amount_capturable"], canceled["amount_received"]) == (
        Decimal("0.00"),
        Decimal("0.00"),
    )
    assert shown_time(canceled["capture_before"]) == deadline  # given once, kept
    at_stripe = sdk.v1.payment_intents.retrieve(intent_id)
    assert (at_stripe.status, at_stripe.cancellation_reason) == ("canceled", "automatic")
    # It came through the receiver and the apply jobs (charge.expired's apply may be the
    # one that reads the intent canceled first), and nothing else read the intent.
    row = wait_until(
        lambda: conn.execute(
            "SELECT source, outcome FROM payments.stripe_events"
            " WHERE payment_id = %s AND type = 'payment_intent.canceled' AND outcome <> 'pending'",
            (payment_id,),
        ).fetchone(),
        "payment_intent.canceled applied",
    )
    assert row == ("webhook", "applied")
    others = conn.execute(
        "SELECT kind FROM metadata.river_job WHERE kind NOT IN"
        " ('create_payment_intent', 'apply_stripe_event')"
    ).fetchall()
    assert others == []


# --- cancel -------------------------------------------------------------------------------------


def test_cancel_a_pending_payment(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
) -> None:
    created = call(database_url, CREATE, 2500, "x", "automatic")
    payment_id = created["payment_id"]

    canceled = operate(
        database_url, "SELECT cancel_payment(%s, %s)", payment_id, "requested_by_customer"
    )

    assert (canceled["status"], canceled["cancellation_reason"]) == (
        "canceled",
        "requested_by_customer",
    )
    intent = intent_of(standin, payment_id)
    assert (intent["status"], intent["cancellation_reason"]) == (
        "canceled",
        "requested_by_customer",
    )
    (operation_id,) = operation_ids(conn, payment_id)
    assert f"payment-worker:cancel_payment:{operation_id}:{intent['id']}" in keys_held(standin)


def test_cancel_an_authorised_payment_releases_it(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "manual")

    canceled = operate(database_url, "SELECT cancel_payment(%s)", payment_id)

    assert canceled["status"] == "canceled"
    assert canceled["amount_received"] == Decimal("0.00")
    at_stripe = sdk.v1.payment_intents.retrieve(intent_id)
    assert (at_stripe.status, at_stripe.amount_received) == ("canceled", 0)


def test_a_cancel_while_the_intent_is_being_created_cancels_that_intent(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
) -> None:
    standin.admin.configure(latency_ms=1000)
    outcome: dict[str, Any] = {}

    def create() -> None:
        try:
            outcome["created"] = call(database_url, CREATE, 2500, "race", "automatic")
        except psycopg.Error as exc:
            outcome["error"] = exc

    creating = threading.Thread(target=create, daemon=True)
    creating.start()
    # The payment is recorded, and its create request is at Stripe (the key taken).
    payment_id = str(
        wait_until(
            lambda: conn.execute(
                "SELECT id FROM payments.transactions WHERE description = 'race'"
            ).fetchone(),
            "the payment",
        )[0]
    )
    key = f"payment-worker:create_payment_intent:{payment_id}"
    wait_until(lambda: key in keys_held(standin), "the create request at the stand-in")
    assert payment(conn, payment_id)["status"] == "pending_intent"

    canceled = operate(database_url, "SELECT cancel_payment(%s, %s)", payment_id, "abandoned")

    creating.join(30)
    assert not creating.is_alive()
    assert canceled["status"] == "canceled"
    intents = standin.admin.intents_with_metadata("payment_id", payment_id)
    assert [(i["status"], i["cancellation_reason"]) for i in intents] == [("canceled", "abandoned")]
    assert payment(conn, payment_id)["status"] == "canceled"
    # The cancel job asked for the intent with the create job's key: Stripe's one intent.
    creates = [r for r in standin.admin.requests(payment_id) if r["route"].startswith("POST")]
    assert len(creates) >= 2
    assert {r["idempotency_key"] for r in creates} == {key}
    # The create RPC answered the payment as it found it: pending, or already canceled.
    if "error" in outcome:
        assert "was canceled" in str(outcome["error"])
    else:
        assert outcome["created"]["payment_id"] == payment_id


# --- refunds ------------------------------------------------------------------------------------


def refunds_of(conn: psycopg.Connection, payment_id: str) -> list[dict[str, Any]]:
    return list(payment(conn, payment_id)["refunds"])


def test_twenty_concurrent_refunds_of_30_percent_make_at_most_three(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "automatic")
    # Each caller takes one of the 20 loopback connections: none may still be held.
    wait_until(lambda: loopbacks_open(conn) == 0, "the loopback connections to close")
    start = threading.Barrier(20)
    answers: list[Any] = []
    lock = threading.Lock()

    def refund() -> None:
        start.wait()
        try:
            answer: Any = operate(database_url, "SELECT refund_payment(%s, %s)", payment_id, 750)
        except psycopg.Error as exc:
            answer = exc
        with lock:
            answers.append(answer)

    threads = [threading.Thread(target=refund, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)

    made = [a for a in answers if isinstance(a, dict)]
    refused = [a for a in answers if not isinstance(a, dict)]
    assert len(answers) == 20
    assert 1 <= len(made) <= 3
    for error in refused:
        assert isinstance(error, psycopg.errors.InvalidParameterValue), error
        assert "is more than the" in str(error) and "left to refund" in str(error)
    assert {(a["amount"], a["currency"], a["status"]) for a in made} == {
        (Decimal("7.50"), "USD", "succeeded")
    }
    at_stripe = standin.admin.refunds()
    assert sorted(r["metadata"]["refund_id"] for r in at_stripe) == sorted(
        a["refund_id"] for a in made
    )
    assert all(r["amount"] == 750 and r["payment_intent"] == intent_id for r in at_stripe)
    assert [r["status"] for r in refunds_of(conn, payment_id)] == ["succeeded"] * len(made)


def test_a_refund_made_in_the_dashboard_appears_through_its_event(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "automatic")
    made = sdk.v1.refunds.create(
        {"payment_intent": intent_id, "amount": 500, "reason": "duplicate"},
        {"idempotency_key": "dashboard-1"},
    )

    deliver(conn, standin)
    (refund,) = wait_until(lambda: refunds_of(conn, payment_id), "the refund recorded")

    assert (refund["amount"], refund["status"], refund["reason"]) == (
        Decimal("5.00"),
        "succeeded",
        "duplicate",
    )
    row = conn.execute(
        "SELECT source, provider_refund_id FROM payments.refunds WHERE payment_id = %s",
        (payment_id,),
    ).fetchone()
    assert row == ("stripe", made.id)
    assert payment(conn, payment_id)["amount_refunded"] == Decimal("5.00")
    # What is left counts it: 20.00 more, not 25.00.
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="2000 left to refund"):
        operate(database_url, "SELECT refund_payment(%s, %s)", payment_id, 2001)


@pytest.mark.parametrize("succeed", [True, False], ids=["settled", "failed"])
def test_a_pending_refund_follows_stripe_to_its_end(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
    succeed: bool,
) -> None:
    payment_id, _ = paid(database_url, conn, standin, sdk, "automatic")
    standin.admin.set_refunds_pending(True)

    answer = operate(
        database_url, "SELECT refund_payment(%s, NULL, %s)", payment_id, "requested_by_customer"
    )

    assert set(answer) == {"refund_id", "payment_id", "amount", "currency", "status", "reason"}
    assert (answer["amount"], answer["status"], answer["reason"]) == (
        Decimal("25.00"),
        "pending",
        "requested_by_customer",
    )
    (at_stripe,) = standin.admin.refunds()
    assert at_stripe["metadata"] == {"refund_id": answer["refund_id"], "payment_id": payment_id}
    assert payment(conn, payment_id)["amount_refunded"] == Decimal("0.00")

    standin.admin.settle_refund(at_stripe["id"], succeed=succeed)
    deliver(conn, standin)

    wanted = "succeeded" if succeed else "failed"
    wait_until(
        lambda: [r["status"] for r in refunds_of(conn, payment_id)] == [wanted],
        f"the refund {wanted}",
    )
    (refund,) = refunds_of(conn, payment_id)
    shown = payment(conn, payment_id)
    if succeed:
        assert shown["amount_refunded"] == Decimal("25.00")
        assert refund["failure_reason"] is None
    else:
        assert shown["amount_refunded"] == Decimal("0.00")
        assert refund["failure_reason"] == "declined"
        # A failed refund gives its amount back: it may be refunded again.
        standin.admin.set_refunds_pending(False)
        again = operate(database_url, "SELECT refund_payment(%s)", payment_id)
        assert (again["amount"], again["status"]) == (Decimal("25.00"), "succeeded")


def test_a_refund_stripe_refuses_fails_with_stripes_words(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, intent_id = paid(database_url, conn, standin, sdk, "automatic")
    # Refunded in full in the dashboard; the database has not heard of it yet.
    sdk.v1.refunds.create({"payment_intent": intent_id}, {"idempotency_key": "dashboard-2"})
    (charge_id,) = {r["charge"] for r in standin.admin.refunds()}

    with pytest.raises(psycopg.errors.RaiseException) as err:
        operate(database_url, "SELECT refund_payment(%s, %s)", payment_id, 100)

    assert str(err.value).splitlines()[0] == (
        f"Refund failed: Charge {charge_id} has already been refunded."
    )
    assert len(standin.admin.refunds()) == 1  # nothing more at Stripe
    statuses = conn.execute(
        "SELECT source, status FROM payments.refunds WHERE payment_id = %s", (payment_id,)
    ).fetchall()
    assert statuses == [("rpc", "failed")]


def test_a_lost_answer_is_taken_back_from_stripes_list_not_made_twice(
    database_url: str,
    conn: psycopg.Connection,
    standin: StandinProcess,
    sdk: stripe.StripeClient,
) -> None:
    payment_id, _ = paid(database_url, conn, standin, sdk, "automatic")
    # Every answer lost: the refund is made, the worker never hears of it, and its
    # immediate retries with the key lose the replays too.
    standin.admin.configure(lose_response=1.0)
    answers: list[Any] = []
    refunding = threading.Thread(
        target=lambda: answers.append(
            operate(database_url, "SELECT refund_payment(%s, %s)", payment_id, 1000)
        ),
        daemon=True,
    )
    refunding.start()
    wait_until(standin.admin.refunds, "the refund at the stand-in")
    wait_until(
        lambda: conn.execute(
            "SELECT 1 FROM metadata.river_job WHERE kind = 'create_refund' AND state = 'retryable'"
        ).fetchone(),
        "the job to wait for its retry",
    )
    standin.admin.configure(lose_response=0.0)

    refunding.join(30)

    (answer,) = answers
    (at_stripe,) = standin.admin.refunds()
    assert at_stripe["metadata"]["refund_id"] == answer["refund_id"]
    assert (answer["amount"], answer["status"]) == (Decimal("10.00"), "succeeded")
    row = conn.execute(
        "SELECT provider_refund_id FROM payments.refunds WHERE id = %s", (answer["refund_id"],)
    ).fetchone()
    assert row == (at_stripe["id"],)


def loopbacks_open(conn: psycopg.Connection) -> int:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity AS a"
        " JOIN payments.loopback AS l ON a.usename = l.role_name"
    ).fetchone()
    assert row is not None
    return int(row[0])
