"""Stripe's webhooks at their worst while the system is under fire: deliveries duplicated,
reordered and dropped, workers SIGKILLed every second, PostgreSQL crashed and restarted.
Customers pay, are declined, pass or fail 3-D Secure, cancel, or walk away; at the
end every payment's status is its PaymentIntent's at the stand-in, and no event is left
unapplied. What the dropped deliveries never said, reconciliation fetched."""

from __future__ import annotations

import contextlib
import secrets
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.conninfo import conninfo_to_dict

from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import free_port, login_role, wait_until
from tests.chaos.cluster import PrivateCluster
from tests.chaos.conftest import Record, StartSupervisord
from tests.chaos.test_chaos import Chaos, insert_payments, query

API_KEY = "sk_test_chaos_webhooks_9Tw3"
WORKERS = 4
SEED = 20261201
PAYMENTS = 120
RECONCILE_AFTER = 4  # seconds: dropped deliveries are made good within this plus a loop
BACKFILL_INTERVAL = 10  # seconds (its minimum): the dropped events themselves come back
CONVERGE_DEADLINE = 90.0
STORY_INTERVAL = 0.15  # seconds between two customers: the stories span the chaos phase
RESTART_AFTER = 8.0  # seconds into the chaos phase

WEBHOOK_FAULTS = {
    "webhook_duplicate": 0.3,
    "webhook_reorder_max": 2.0,
    "webhook_drop": 0.1,
    "webhook_bad_signature": 0.05,
}

# What a customer does with a payment, by its position: cards in order, 3-D Secure outcomes,
# a cancel. The stand-in's status at the end decides the expected one. (Our intents take
# cards only, so the asynchronous bank debit is tested in tests/integration, not here.)
STORIES: list[tuple[str, ...]] = [
    ("pm_card_visa",),
    ("pm_card_chargeDeclined", "pm_card_visa"),
    ("pm_card_authenticationRequired", "3ds:succeed"),
    ("pm_card_authenticationRequired", "3ds:fail"),
    ("cancel",),
    (),
    ("pm_card_chargeDeclinedInsufficientFunds",),
]

# Ours for Stripe's (README: "Payment statuses").
OURS = {
    "requires_payment_method": "pending",
    "requires_confirmation": "pending",
    "requires_action": "pending",
    "processing": "processing",
    "requires_capture": "requires_capture",
    "succeeded": "succeeded",
    "canceled": "canceled",
}


@dataclass
class Customers:
    """Plays every payment's story against the stand-in, through the real SDK."""

    standin: StandinProcess
    intents: dict[str, str]  # payment id -> PaymentIntent id
    errors: list[str] = field(default_factory=list)
    done: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        client = stripe.StripeClient(
            "sk_test_chaos_customer", base_addresses={"api": self.standin.url}
        )
        try:
            start = time.monotonic()
            for i, (payment_id, intent_id) in enumerate(sorted(self.intents.items())):
                time.sleep(max(0.0, start + i * STORY_INTERVAL - time.monotonic()))
                for step in STORIES[i % len(STORIES)]:
                    self._step(client, intent_id, step, f"{payment_id}:{step}")
        except Exception as exc:  # surfaced by the test
            self.errors.append(f"customers: {type(exc).__name__}: {exc}")
        finally:
            self.done.set()

    def _step(self, client: stripe.StripeClient, intent_id: str, step: str, key: str) -> None:
        if step == "cancel":
            client.v1.payment_intents.cancel(
                intent_id, {"cancellation_reason": "abandoned"}, {"idempotency_key": key}
            )
        elif step.startswith("3ds:"):
            self.standin.admin.authenticate(intent_id, succeed=step == "3ds:succeed")
        else:
            # A decline leaves the intent in requires_payment_method: the story goes on.
            with contextlib.suppress(stripe.CardError):
                client.v1.payment_intents.confirm(
                    intent_id, {"payment_method": step}, {"idempotency_key": key}
                )


def mismatches(url: str, standin: StandinProcess) -> list[str]:
    """Payments whose status, Stripe status or amount received differ from the stand-in's."""
    truth = {
        i["payment_intent"]["id"]: i["payment_intent"] for i in standin.admin.payment_intents()
    }
    rows = query(
        url,
        "SELECT id::text AS id, status, provider_status, provider_payment_id, amount_received"
        " FROM payments.transactions",
    )
    wrong = []
    for row in rows:
        intent = truth.get(row["provider_payment_id"] or "")
        if intent is None:
            wrong.append(f"{row['id']}: no intent")
            continue
        want = (OURS[intent["status"]], intent["status"], intent.get("amount_received") or 0)
        have = (row["status"], row["provider_status"], row["amount_received"] or 0)
        if want != have:
            wrong.append(f"{row['id']} {row['provider_payment_id']}: have {have}, want {want}")
    return wrong


def unapplied(url: str) -> int:
    rows = query(url, "SELECT count(*) AS n FROM payments.stripe_events WHERE outcome = 'pending'")
    return int(rows[0]["n"])


def missing_events(url: str, standin: StandinProcess) -> set[str]:
    """The stand-in's payment_intent.* events that the database does not hold."""
    sent = {e["id"] for e in standin.admin.events() if e["type"].startswith("payment_intent.")}
    held = {r["id"] for r in query(url, "SELECT id FROM payments.stripe_events")}
    return sent - held


@pytest.mark.chaos
@pytest.mark.timeout(300)
def test_every_payment_ends_in_stripes_state_through_webhook_faults_kills_and_a_crash(
    pg_cluster: PrivateCluster,
    chaos_db: str,
    worker_url: str,
    start_supervisord: StartSupervisord,
    record_summary: Record,
) -> None:
    url = chaos_db
    port = free_port()
    secret = "whsec_" + secrets.token_hex(24)
    with (
        login_role(chaos_db, "pw_chaos_hook", ["payment_webhook"]) as receiver_login,
        StandinProcess(
            seed=SEED,
            quiet=True,
            webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe",
            webhook_secret=secret,
            webhook_retry_base=0.5,
            **WEBHOOK_FAULTS,
        ) as standin,
    ):
        dbname = str(conninfo_to_dict(chaos_db)["dbname"])
        sup = start_supervisord(
            {
                "DATABASE_URL": worker_url,
                "WEBHOOK_DATABASE_URL": pg_cluster.url(dbname, user=receiver_login),
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": standin.url,
                "STRIPE_WEBHOOK_SECRET": secret,
                "WEBHOOK_HOST": "127.0.0.1",
                "WEBHOOK_PORT": str(port),
                "RIVER_WORKER_COUNT": str(WORKERS),
                "RECONCILE_AFTER": str(RECONCILE_AFTER),
                "BACKFILL_INTERVAL": str(BACKFILL_INTERVAL),
            }
        )
        sup.wait_workers_running(WORKERS)
        wait_until(
            lambda: any(
                p["name"] == "webhooks" and p["statename"] == "RUNNING" for p in sup.processes()
            ),
            30,
            sup.output,
        )

        # --- phase 1: payments made, each with its intent --------------------------------
        for batch in range(PAYMENTS // 20):
            insert_payments(url, f"w{batch:02d}", 20, 1000 + 100 * batch)

        def all_have_intents() -> dict[str, str]:
            rows = query(
                url, "SELECT id::text AS id, provider_payment_id FROM payments.transactions"
            )
            done = {r["id"]: r["provider_payment_id"] for r in rows if r["provider_payment_id"]}
            return done if len(done) == PAYMENTS else {}

        intents = wait_until(all_have_intents, 60, lambda: sup.output()[-4000:])

        # --- phase 2: customers act while workers die and the database crashes -------------
        chaos = Chaos(url)
        customers = Customers(standin, intents)
        started = time.monotonic()
        killer = chaos.thread(chaos.kill_every_second, "killer")
        threading.Thread(target=customers.run, name="customers", daemon=True).start()
        try:
            # The crash lands while customers pay and webhooks arrive.
            time.sleep(RESTART_AFTER)
            pg_cluster.restart("immediate")
            customers.done.wait(120)
        finally:
            chaos.stop_kills.set()
            killer.join(timeout=30)
        chaos_seconds = time.monotonic() - started

        # --- phase 3: everything converges on Stripe's state ------------------------------
        converge_start = time.monotonic()
        wait_until(
            lambda: standin.admin.webhook_stats().get("pending") == 0,
            30,
            lambda: f"deliveries still pending: {standin.admin.webhook_stats()}",
        )
        # What the webhooks never said: the backfill must bring these.
        missing_after_delivery = len(missing_events(url, standin))
        wrong: list[str] = []
        missing: set[str] = set()

        def converged() -> bool:
            nonlocal wrong, missing
            try:
                wrong = mismatches(url, standin)
                missing = missing_events(url, standin)
                return not wrong and not missing and unapplied(url) == 0
            except psycopg.OperationalError:
                return False

        wait_until(
            converged,
            CONVERGE_DEADLINE,
            lambda: (
                f"not converged: {len(wrong)} wrong, {len(missing)} events missing, "
                f"{unapplied(url)} unapplied:\n" + "\n".join(wrong[:10])
            ),
        )
        converge_seconds = time.monotonic() - converge_start
        webhooks = standin.admin.webhook_stats()
        sent = Counter(e["type"].split(".")[0] for e in standin.admin.events())
        events = query(
            url,
            "SELECT source, outcome, count(*) AS n FROM payments.stripe_events GROUP BY 1, 2",
        )
        # Each event held once and applied by one job, however often it was delivered.
        jobs_per_event = query(
            url,
            "SELECT e.id, count(j.id) AS jobs FROM payments.stripe_events AS e"
            " LEFT JOIN metadata.river_job AS j"
            "   ON j.kind = 'apply_stripe_event' AND j.args ->> 'event_id' = e.id"
            " WHERE e.payment_id IS NOT NULL GROUP BY e.id HAVING count(j.id) <> 1",
        )
        declined_now = query(
            url,
            "SELECT count(*) AS n FROM payments.transactions"
            " WHERE status = 'pending' AND last_payment_error_code IS NOT NULL",
        )[0]["n"]
        status = sup.stop()

    statuses = Counter(r["status"] for r in query(url, "SELECT status FROM payments.transactions"))
    by_source: Callable[[Any], str] = lambda r: f"{r['source']}/{r['outcome']}"  # noqa: E731
    record_summary(
        f"chaos-webhooks: payments={PAYMENTS} statuses={dict(statuses)} "
        f"deliveries={webhooks.get('deliveries')} attempts={webhooks.get('attempts')} "
        f"duplicates={webhooks.get('duplicates')} drops={webhooks.get('drops')} "
        f"reorders={webhooks.get('reorders')} failures={webhooks.get('failures')} "
        f"bad_signatures={webhooks.get('bad_signatures')} "
        f"kills={len(chaos.kills)} restarts={pg_cluster.restarts} "
        f"sent={dict(sent)} held={ {by_source(r): r['n'] for r in events} } "
        f"missing_after_delivery={missing_after_delivery} "
        f"chaos_phase={chaos_seconds:.0f}s converged_after={converge_seconds:.1f}s"
    )
    assert not chaos.errors, chaos.errors
    assert not customers.errors, customers.errors
    assert status == 0, f"supervisord exited {status}"
    assert webhooks.get("drops", 0) > 0 and webhooks.get("duplicates", 0) > 0
    assert webhooks.get("reorders", 0) > 0
    assert len(chaos.kills) > 0 and pg_cluster.restarts >= 1
    # Every story's end is represented: paid, declined-then-paid, canceled, left pending.
    assert {"succeeded", "pending", "canceled"} <= set(statuses)
    assert declined_now > 0, "no payment left declined shows its last payment error"
    assert not jobs_per_event, f"events without exactly one apply job: {jobs_per_event[:10]}"
