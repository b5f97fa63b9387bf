"""What webhooks miss: the reconciler's sync_payment jobs for payments that have not
reflected Stripe for RECONCILE_AFTER (and succeeded ones whose refunds are still open),
payments.resync() for one at once, and the backfill from Stripe's event list."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from uuid import UUID, uuid4

import psycopg
import pytest
from psycopg_pool import ConnectionPool

from tests import pg
from tests.integration import lifecycle as lc
from tests.integration.conftest import MakeRole, connect_as
from tests.integration.rows import QUEUE, claim, insert_payment, payment_row
from tests.integration.standin_flows import sdk_client
from worker.executor import JobExecutor
from worker.maintenance import Backfill, Leadership, Reconciler
from worker.store import BackfillPosition, Store
from worker.stripe_gateway import PAYMENT_EVENT_TYPES, StripeGateway


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


@pytest.fixture
def stop() -> threading.Event:
    return threading.Event()


def reconciler(store: Store, stop: threading.Event, **kwargs: float) -> Reconciler:
    return Reconciler(
        store, Leadership(store, stop=stop), queue=QUEUE, stop=stop, after=60, **kwargs
    )


def created_payment(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, owner: str | None = pg.USER
) -> tuple[UUID, str]:
    payment_id = insert_payment(conn, 2500, owner_role=owner)
    assert lc.run_available(store, executor) == 1
    return payment_id, lc.intent_id_of(conn, payment_id)


def last_synced(conn: psycopg.Connection, payment_id: UUID, ago: str = "1 hour") -> None:
    """The payment last reflected Stripe `ago` (as if nothing had been heard since)."""
    conn.execute(
        "UPDATE payments.transactions SET provider_synced_at = now() - %s::interval WHERE id = %s",
        (ago, payment_id),
    )


def sync_jobs(conn: psycopg.Connection) -> list[tuple[str, str]]:
    return [
        (str(r[0]), str(r[1]))
        for r in conn.execute(
            "SELECT args->>'payment_id', state FROM metadata.river_job"
            " WHERE kind = 'sync_payment' ORDER BY id"
        )
    ]


# --- the reconciler -----------------------------------------------------------------------------


def test_with_no_event_at_all_reconciliation_brings_the_payment_to_stripes_state(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    stripe.move(intent_id, "succeeded")  # and its webhook never arrives
    last_synced(conn, payment_id)
    loop = reconciler(store, stop)

    # Phase 1: one sync_payment job, and no second while it waits.
    assert loop.run_once() == 1
    assert loop.run_once() == 0
    assert sync_jobs(conn) == [(str(payment_id), "available")]

    # Phase 2: the job reads Stripe; the payment is fresh and final, nothing more to do.
    assert lc.run_available(store, executor) == 1
    row = payment_row(conn, payment_id)
    assert (row["status"], row["provider_status"], row["amount_received"]) == (
        "succeeded",
        "succeeded",
        2500,
    )
    assert loop.run_once() == 0
    assert conn.execute("SELECT count(*) FROM payments.stripe_events").fetchone() == (0,)


def test_a_payment_that_reflected_stripe_recently_is_not_reconciled(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stop: threading.Event
) -> None:
    fresh, _ = created_payment(conn, store, executor)
    stale, _ = created_payment(conn, store, executor)
    last_synced(conn, fresh, "30 seconds")
    last_synced(conn, stale, "90 seconds")
    assert reconciler(store, stop).run_once() == 1
    assert sync_jobs(conn) == [(str(stale), "available")]


def test_final_payments_and_those_without_an_intent_are_not_reconciled(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    done, intent_id = created_payment(conn, store, executor)
    lc.record(conn, lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded"))
    lc.run_available(store, executor)
    last_synced(conn, done)
    insert_payment(conn)  # its create job has not run: no intent to read
    assert reconciler(store, stop).run_once() == 0
    assert sync_jobs(conn) == []


def test_reconciliation_is_bounded_and_spread_at_its_rate(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stop: threading.Event
) -> None:
    payments = [created_payment(conn, store, executor)[0] for _ in range(7)]
    for payment_id in payments:
        last_synced(conn, payment_id)
    loop = reconciler(store, stop, rate=4, interval=1)

    assert loop.run_once() == 4
    delays = [
        r[0]
        for r in conn.execute(
            "SELECT scheduled_at - min(scheduled_at) OVER () FROM metadata.river_job"
            " WHERE kind = 'sync_payment' ORDER BY scheduled_at"
        )
    ]
    assert delays == [timedelta(seconds=s) for s in (0, 0.25, 0.5, 0.75)]
    assert loop.run_once() == 3
    assert loop.run_once() == 0
    assert sorted(p for p, _ in sync_jobs(conn)) == sorted(str(p) for p in payments)


def test_the_reconcilers_settings_are_checked_at_construction(
    store: Store, stop: threading.Event
) -> None:
    with pytest.raises(ValueError, match="rate"):
        reconciler(store, stop, rate=0)
    with pytest.raises(ValueError, match="after"):
        Reconciler(store, Leadership(store, stop=stop), queue=QUEUE, stop=stop, after=0.5)


def paid_payment(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> tuple[UUID, str]:
    """A payment the customer paid with a card (a real charge at the stand-in), succeeded in
    the database too."""
    payment_id, intent_id = created_payment(conn, store, executor)
    with sdk_client(stripe.url, lc.API_KEY) as sdk:
        sdk.v1.payment_intents.confirm(intent_id, {"payment_method": "pm_card_visa"})
    conn.execute("SELECT payments.resync(%s)", (payment_id,))
    assert lc.run_available(store, executor) == 1
    assert lc.status_of(conn, payment_id) == "succeeded"
    return payment_id, intent_id


def refund_requested(conn: psycopg.Connection, payment_id: UUID, amount: int) -> UUID:
    """A refund as refund_payment records it; its trigger enqueues its create_refund job."""
    refund_id = uuid4()
    conn.execute(
        "INSERT INTO payments.refunds (id, payment_id, amount, currency, reason, source,"
        " requested_role) VALUES (%s, %s, %s, 'USD', 'requested_by_customer', 'rpc', session_user)",
        (refund_id, payment_id, amount),
    )
    return refund_id


def refund_status(conn: psycopg.Connection, refund_id: UUID) -> tuple[str, str | None]:
    row = conn.execute(
        "SELECT status, failure_reason FROM payments.refunds WHERE id = %s", (refund_id,)
    ).fetchone()
    assert row is not None
    return row[0], row[1]


def an_hour_passes(conn: psycopg.Connection, payment_id: UUID, refund_id: UUID) -> None:
    """Nothing was heard of the payment or of its refund for an hour."""
    last_synced(conn, payment_id)
    conn.execute(
        "UPDATE payments.refunds SET provider_synced_at = now() - interval '1 hour' WHERE id = %s",
        (refund_id,),
    )


@pytest.mark.parametrize("succeed", [True, False], ids=["settled", "failed"])
def test_a_refund_stripe_settles_unheard_is_brought_to_its_end_by_reconciliation(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
    succeed: bool,
) -> None:
    """A succeeded payment is final: only its open refund brings it back to the
    reconciler. This stand-in delivers no webhook: no event ever reaches the database."""
    payment_id, _ = paid_payment(conn, store, executor, stripe)
    stripe.app.refunds.pending = True
    refund_id = refund_requested(conn, payment_id, 1000)
    assert lc.run_available(store, executor) == 1  # create_refund: Stripe holds it pending
    assert refund_status(conn, refund_id) == ("pending", None)
    (at_stripe,) = stripe.app.refunds.all()
    assert at_stripe["metadata"]["refund_id"] == str(refund_id)
    loop = reconciler(store, stop)
    # Phase 1: the refund and its payment were read just now: nothing to reconcile.
    assert loop.run_once() == 0

    # Phase 2: Stripe settles it and its events go nowhere; an hour passes.
    wanted = "succeeded" if succeed else "failed"
    assert stripe.app.refunds.settle(at_stripe["id"], succeed=succeed)["status"] == wanted
    an_hour_passes(conn, payment_id, refund_id)
    assert loop.run_once() == 1
    assert loop.run_once() == 0  # one sync job waiting is enough
    # The first is the resync that saw it paid.
    assert sync_jobs(conn) == [(str(payment_id), "completed"), (str(payment_id), "available")]
    assert refund_status(conn, refund_id) == ("pending", None)

    # Phase 3: the sync job re-reads the intent and its refunds.
    assert lc.run_available(store, executor) == 1
    assert refund_status(conn, refund_id) == (wanted, None if succeed else "declined")
    shown = conn.execute("SELECT get_payment(%s)", (payment_id,)).fetchone()
    assert shown is not None
    assert shown[0]["status"] == "succeeded"
    assert [r["status"] for r in shown[0]["refunds"]] == [wanted]
    assert shown[0]["amount_refunded"] == (Decimal("10.00") if succeed else Decimal("0.00"))
    # Phase 4: its refund closed, the payment is no longer reconciled, however stale.
    an_hour_passes(conn, payment_id, refund_id)
    assert loop.run_once() == 0
    assert conn.execute("SELECT count(*) FROM payments.stripe_events").fetchone() == (0,)


def test_a_sync_of_an_intent_stripe_lost_completes_without_a_change(
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    payment_id, _ = created_payment(conn, store, executor)
    stripe.app.intents.clear()
    last_synced(conn, payment_id)
    assert reconciler(store, stop).run_once() == 1
    assert lc.run_available(store, executor) == 1
    assert sync_jobs(conn) == [(str(payment_id), "completed")]
    assert payment_row(conn, payment_id)["status"] == "pending"


# --- payments.resync ------------------------------------------------------------------------------


def test_resync_queues_one_reread_at_a_time(
    conn: psycopg.Connection, store: Store, executor: JobExecutor, stripe: lc.InProcessStandin
) -> None:
    payment_id, intent_id = created_payment(conn, store, executor)
    stripe.move(intent_id, "processing")
    assert conn.execute("SELECT payments.resync(%s)", (payment_id,)).fetchone() == (True,)
    assert conn.execute("SELECT payments.resync(%s)", (payment_id,)).fetchone() == (False,)

    # Taken by a worker (its token may predate what the caller wants seen): a new one queues.
    job = claim(store)
    assert conn.execute("SELECT payments.resync(%s)", (payment_id,)).fetchone() == (True,)
    executor.execute(job)
    assert lc.run_available(store, executor) == 1
    assert lc.status_of(conn, payment_id) == "processing"


def test_resync_says_clearly_what_it_cannot_do(
    conn: psycopg.Connection, store: Store, executor: JobExecutor
) -> None:
    unknown = uuid4()
    with pytest.raises(psycopg.errors.NoDataFound, match=f"payment {unknown} does not exist"):
        conn.execute("SELECT payments.resync(%s)", (unknown,))
    waiting = insert_payment(conn)
    claim(store, "slow-creator")  # its create job is still at work
    with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="no PaymentIntent yet"):
        conn.execute("SELECT payments.resync(%s)", (waiting,))


def test_a_client_may_resync_its_own_payment_only(
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    executor: JobExecutor,
    login_role: MakeRole,
) -> None:
    alice, bob = login_role("payment_client"), login_role("payment_client")
    alices, _ = created_payment(conn, store, executor, owner=alice)
    with connect_as(database_url, alice) as session:
        assert session.execute("SELECT payments.resync(%s)", (alices,)).fetchone() == (True,)
    with (
        connect_as(database_url, bob) as session,
        pytest.raises(psycopg.errors.NoDataFound, match="does not exist"),
    ):
        session.execute("SELECT payments.resync(%s)", (alices,))
    worker = login_role("payment_worker")
    with (
        connect_as(database_url, worker) as session,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        session.execute("SELECT payments.resync(%s)", (alices,))
    assert len(sync_jobs(conn)) == 1


# --- the backfill ---------------------------------------------------------------------------------


def backfill(store: Store, gateway: StripeGateway, stop: threading.Event, **kw: int) -> Backfill:
    """A leader's backfill: `store`'s leader session takes the leadership first (the
    database takes the backfill's position from no other session)."""
    leadership = Leadership(store, stop=stop)
    assert leadership.run_once()
    return Backfill(store, leadership, gateway, queue=QUEUE, stop=stop, **kw)


@pytest.fixture
def other_store(pool: ConnectionPool) -> Iterator[Store]:
    """A second worker on the same database: its own leader session."""
    s = Store(pool)
    yield s
    s.close()


def leader_dies(conn: psycopg.Connection) -> None:
    """The leader's session ends as in a crash or failover, without resigning."""
    row = conn.execute(
        "SELECT pg_terminate_backend(backend_pid, 5000) FROM payments.worker_leader"
    ).fetchone()
    assert row == (True,)


def covered_at(store: Store) -> datetime:
    position = store.backfill_position()
    assert position is not None
    assert position.covered_at is not None
    return position.covered_at


def test_the_backfill_records_what_the_receiver_missed_and_applies_it(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    stripe.serve_events()
    payment_id, intent_id = created_payment(conn, store, executor)
    held = lc.event(stripe.intent(intent_id), "payment_intent.created")
    held["created"] -= 3600
    stripe.events.append(held)
    assert lc.record(conn, held) == "stored"
    lc.run_available(store, executor)
    # The receiver was down for these two; charge.pending is not among the listed types.
    missed = [
        lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing"),
        lc.event(stripe.intent(intent_id), "charge.pending"),
        lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded"),
    ]
    stripe.events.extend(missed)

    assert backfill(store, gateway, stop).run_once() == 2
    asked = stripe.event_requests[0]
    listed = [v[0] for k, v in sorted(asked.items()) if k.startswith("types[")]
    assert sorted(listed) == sorted(PAYMENT_EVENT_TYPES)
    assert "type" not in asked
    assert asked["created[gte]"] == [str(held["created"] - 300)]
    sources = conn.execute(
        "SELECT id, source FROM payments.stripe_events ORDER BY created, id"
    ).fetchall()
    assert dict(sources) == {
        held["id"]: "webhook",
        missed[0]["id"]: "backfill",
        missed[2]["id"]: "backfill",
    }
    lc.run_available(store, executor)
    assert lc.status_of(conn, payment_id) == "succeeded"
    # Again: every listed event is held, so nothing new.
    assert backfill(store, gateway, stop).run_once() == 0


def test_a_long_list_is_read_over_several_passes_without_a_gap(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    stripe.serve_events()
    _, intent_id = created_payment(conn, store, executor)
    stripe.events.extend(
        lc.event(stripe.intent(intent_id), "payment_intent.requires_action") for _ in range(250)
    )
    loop = backfill(store, gateway, stop, max_pages=2)
    assert loop.run_once() == 200
    assert loop.run_once() == 50
    assert loop.run_once() == 0
    assert conn.execute("SELECT count(*) FROM payments.stripe_events").fetchone() == (250,)


def test_an_outage_between_two_passes_is_covered_though_newer_events_arrived(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    stripe.serve_events()
    payment_id, intent_id = created_payment(conn, store, executor)
    loop = backfill(store, gateway, stop)

    # Phase 1: a pass reads the whole list (empty): covered up to its start.
    assert store.backfill_position() is None
    assert loop.run_once() == 0
    covered = int(covered_at(store).timestamp())

    # Phase 2: the receiver misses one event, then is back and records a much newer one.
    missed = lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing")
    newer = lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded")
    newer["created"] = missed["created"] + 3600
    stripe.events.extend([missed, newer])
    assert lc.record(conn, newer) == "stored"

    # Phase 3: the next pass starts from the last complete one, not from the newest held.
    assert loop.run_once() == 1
    assert stripe.event_requests[-1]["created[gte]"] == [str(covered - 300)]
    assert lc.event_row(conn, missed["id"])["source"] == "backfill"
    lc.run_available(store, executor)
    assert lc.status_of(conn, payment_id) == "succeeded"


def test_a_new_leader_reads_back_an_outage_that_spanned_a_leader_change(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    other_store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    stripe.serve_events()
    payment_id, intent_id = created_payment(conn, store, executor)

    # Phase 1: the first leader reads the whole list (empty); its position is saved.
    assert backfill(store, gateway, stop).run_once() == 0
    covered = int(covered_at(store).timestamp())

    # Phase 2: the receiver misses one event, the leader dies, and the receiver, back,
    # records a much newer one.
    missed = lc.event(stripe.move(intent_id, "processing"), "payment_intent.processing")
    newer = lc.event(stripe.move(intent_id, "succeeded"), "payment_intent.succeeded")
    newer["created"] = missed["created"] + 3600
    stripe.events.extend([missed, newer])
    leader_dies(conn)
    assert lc.record(conn, newer) == "stored"

    # Phase 3: the new leader starts from the saved pass, not from the newest held event.
    assert backfill(other_store, gateway, stop).run_once() == 1
    assert stripe.event_requests[-1]["created[gte]"] == [str(covered - 300)]
    assert lc.event_row(conn, missed["id"])["source"] == "backfill"
    assert int(covered_at(store).timestamp()) >= covered
    lc.run_available(store, executor)
    assert lc.status_of(conn, payment_id) == "succeeded"


def test_a_pass_cut_by_max_pages_is_continued_by_the_next_leader(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    other_store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    stripe.serve_events()
    _, intent_id = created_payment(conn, store, executor)
    stripe.events.extend(
        lc.event(stripe.intent(intent_id), "payment_intent.requires_action") for _ in range(250)
    )

    # Phase 1: the first leader reads two pages and is cut: its cursor is saved.
    assert backfill(store, gateway, stop, max_pages=2).run_once() == 200
    position = store.backfill_position()
    assert position is not None
    assert position.covered_at is None
    assert position.resume is not None
    since, cursor, started = position.resume
    assert cursor == stripe.events[250 - 200]["id"]  # the oldest of the newest 200
    leader_dies(conn)

    # Phase 2: another leader continues that listing from its cursor.
    loop = backfill(other_store, gateway, stop, max_pages=2)
    assert loop.run_once() == 50
    asked = stripe.event_requests[-1]
    assert (asked["created[gte]"], asked["starting_after"]) == ([str(since)], [cursor])
    assert store.backfill_position() == BackfillPosition(covered_at=started, resume=None)

    # Phase 3: the next pass starts anew from the cut pass's start, and finds nothing new.
    asked_before = len(stripe.event_requests)
    assert loop.run_once() == 0
    first = stripe.event_requests[asked_before]
    assert "starting_after" not in first
    assert first["created[gte]"] == [str(int(started.timestamp()) - 300)]
    assert conn.execute("SELECT count(*) FROM payments.stripe_events").fetchone() == (250,)


def test_only_the_leaders_session_moves_the_backfills_position(  # noqa: PLR0917
    conn: psycopg.Connection,
    database_url: str,
    store: Store,
    other_store: Store,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
    login_role: MakeRole,
) -> None:
    stripe.serve_events()
    loop = backfill(store, gateway, stop)
    not_leader = psycopg.errors.ObjectNotInPrerequisiteState
    when = datetime.now(UTC)

    # Phase 1: a worker login's own session, while another holds the leadership.
    worker = login_role("payment_worker")
    with connect_as(database_url, worker) as session:
        with pytest.raises(not_leader, match="only the maintenance leader"):
            session.execute("SELECT payments.backfill_pass_complete(now())")
        with pytest.raises(not_leader, match="only the maintenance leader"):
            session.execute("SELECT payments.backfill_pass_cut(0, 'evt_1', now())")
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            session.execute("SELECT * FROM payments.backfill_cursor")
        # Reading it is allowed (nothing saved yet).
        assert session.execute("SELECT * FROM payments.backfill_position()").fetchall() == []

    # Phase 2: another worker's leader session, which did not win the election.
    assert not Leadership(other_store, stop=stop).run_once()
    with pytest.raises(not_leader):
        other_store.backfill_pass_complete(when)
    with pytest.raises(not_leader):
        other_store.backfill_pass_cut(0, "evt_1", when)
    other = Backfill(
        other_store, Leadership(other_store, stop=stop), gateway, queue=QUEUE, stop=stop
    )
    with pytest.raises(not_leader):
        other.run_once()
    assert store.backfill_position() is None

    # Phase 3: the leader's own session once its leadership has expired unrenewed.
    conn.execute("UPDATE payments.worker_leader SET expires_at = now() - interval '1 second'")
    with pytest.raises(not_leader):
        loop.run_once()
    assert store.backfill_position() is None

    # Phase 4: renewed, it moves the position, and never back to an older pass.
    assert Leadership(store, stop=stop).run_once()
    assert loop.run_once() == 0
    covered = covered_at(store)
    assert covered > when
    assert store.backfill_pass_complete(when) is False
    assert store.backfill_pass_cut(0, "evt_1", when) is False
    assert store.backfill_position() == BackfillPosition(covered_at=covered, resume=None)


def test_the_backfill_lists_refund_events_too(  # noqa: PLR0917
    conn: psycopg.Connection,
    store: Store,
    executor: JobExecutor,
    gateway: StripeGateway,
    stripe: lc.InProcessStandin,
    stop: threading.Event,
) -> None:
    """A refund made in Stripe's dashboard whose webhook was lost: its refund.created is
    listed and recorded for the payment, so its apply job re-reads the refunds."""
    stripe.serve_events()
    payment_id, intent_id = created_payment(conn, store, executor)
    refund = {
        "id": "re_" + uuid4().hex[:24],
        "object": "refund",
        "amount": 500,
        "currency": "usd",
        "payment_intent": intent_id,
        "status": "succeeded",
        "metadata": {},
    }
    missed = [lc.event(refund, "refund.created"), lc.event(refund, "charge.refund.updated")]
    stripe.events.extend(missed)

    assert backfill(store, gateway, stop).run_once() == 1
    row = lc.event_row(conn, missed[0]["id"])
    assert (row["source"], row["payment_id"], row["outcome"]) == ("backfill", payment_id, "pending")
