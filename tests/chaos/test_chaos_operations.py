"""Captures and refunds, each exactly once, through Stripe faults and SIGKILLed workers.

The real supervisord.conf runs 4 workers; the stand-in fails, rate-limits, drops and loses
answers (25 % of attempts, as in test_chaos.py) while a worker is SIGKILLed every second.
Operators meanwhile capture authorised payments (in full or in part) and refund paid
ones (a part, then the rest), several at once. At the end every operation succeeded,
every capture happened once at Stripe, every refund row has exactly one Stripe refund
(and Stripe no refund without a row), and the amounts in the database are the
stand-in's, to the cent.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import psycopg
import pytest
import stripe
from psycopg.conninfo import conninfo_to_dict

from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import login_role, wait_until
from tests.chaos.cluster import PrivateCluster
from tests.chaos.conftest import Record, StartSupervisord
from tests.chaos.test_chaos import FAULTS, NO_FAULTS, Chaos, attempt_story, query, unfinished

API_KEY = "sk_test_chaos_operations_7Qm2"
WORKERS = 4
SEED = 20261202
LATENCY_MS = 20
PAYMENTS = 40  # of each capture method
AMOUNT = 2500
PARTIAL_CAPTURE = 1800  # every other authorisation: the rest is released
FIRST_REFUND = 1000  # then the rest (NULL)
OPERATORS = 4  # concurrent operator sessions
SYNC_TIMEOUT = "3 s"  # a call that waits longer is answered later: the request goes on
DRAIN_DEADLINE = 60.0


def insert_paid_setup(url: str, capture_method: str, count: int) -> list[str]:
    with psycopg.connect(url, autocommit=True) as conn:
        return [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO payments.transactions (amount, currency, description, capture_method)"
                " SELECT %s, 'USD', 'chaos operations ' || %s || ' #' || n, %s"
                " FROM generate_series(1, %s) AS n RETURNING id",
                (AMOUNT, capture_method, capture_method, count),
            )
        ]


def statuses(url: str, ids: list[str]) -> dict[str, dict[str, Any]]:
    rows = query(
        url,
        "SELECT id::text AS id, status, provider_payment_id, capture_before, amount_received"
        " FROM payments.transactions WHERE id = ANY(%s::uuid[])",
        (ids,),
    )
    return {r["id"]: r for r in rows}


def all_in(url: str, ids: list[str], status: str) -> dict[str, dict[str, Any]] | None:
    rows = statuses(url, ids)
    ok = all(
        r["status"] == status and (status != "requires_capture" or r["capture_before"])
        for r in rows.values()
    )
    return rows if ok and len(rows) == len(ids) else None


@dataclass
class Operators:
    """Operator sessions calling capture_payment and refund_payment, each call recorded.
    A task's calls run in order in one session (a refund of the rest after the first)."""

    url: str
    tasks: list[list[tuple[str, str, Any]]]  # [(rpc, payment id, amount), ...]
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: list[str] = field(default_factory=list)
    _next: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def run(self) -> None:
        threads = [threading.Thread(target=self._session, daemon=True) for _ in range(OPERATORS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(120)

    def _take(self) -> list[tuple[str, str, Any]] | None:
        with self._lock:
            if self._next >= len(self.tasks):
                return None
            self._next += 1
            return self.tasks[self._next - 1]

    def _session(self) -> None:
        try:
            with psycopg.connect(self.url, autocommit=True) as conn:
                conn.execute(
                    "SELECT set_config('payments.sync_timeout', %s, false)", (SYNC_TIMEOUT,)
                )
                while (task := self._take()) is not None:
                    for call in task:
                        self._call(conn, *call)
        except Exception as exc:  # surfaced by the test
            self.errors.append(f"operator: {type(exc).__name__}: {exc}")

    def _call(self, conn: psycopg.Connection[Any], name: str, payment_id: str, amount: Any) -> None:
        statement = {
            "capture": "SELECT capture_payment(%s, %s)->>'status'",
            "refund": "SELECT refund_payment(%s, %s)->>'status'",
        }[name]
        try:
            row = conn.execute(statement, (payment_id, amount)).fetchone()
        except psycopg.errors.RaiseException as exc:
            if "is not answered after" in str(exc):
                self.outcomes[f"{name}:timeout"] += 1  # it goes on: checked at the end
                return
            self.errors.append(f"{name} {payment_id} {amount}: {exc}")
            return
        except psycopg.Error as exc:
            self.errors.append(f"{name} {payment_id} {amount}: {type(exc).__name__}: {exc}")
            return
        self.outcomes[f"{name}:{row[0] if row else None}"] += 1


@pytest.mark.chaos
@pytest.mark.timeout(240)
def test_captures_and_refunds_happen_once_through_kills_and_stripe_faults(
    pg_cluster: PrivateCluster,
    chaos_db: str,
    worker_url: str,
    start_supervisord: StartSupervisord,
    record_summary: Record,
) -> None:
    url = chaos_db
    with (
        login_role(chaos_db, "pw_chaos_operator", ["payment_operator"]) as operator,
        StandinProcess(latency_ms=LATENCY_MS, seed=SEED, quiet=True) as standin,
    ):
        sup = start_supervisord(
            {
                "DATABASE_URL": worker_url,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": standin.url,
                "RIVER_WORKER_COUNT": str(WORKERS),
            }
        )
        sup.wait_workers_running(WORKERS)

        # --- setup, no faults: authorised and paid payments ------------------------------
        manual = insert_paid_setup(url, "manual", PAYMENTS)
        automatic = insert_paid_setup(url, "automatic", PAYMENTS)
        everyone = manual + automatic
        pending = wait_until(lambda: all_in(url, everyone, "pending"), 60, sup.output)
        client = stripe.StripeClient("sk_test_chaos_customer", base_addresses={"api": standin.url})
        dbname = str(conninfo_to_dict(url)["dbname"])
        operator_url = pg_cluster.url(dbname, user=operator)
        with psycopg.connect(operator_url, autocommit=True) as conn:
            for payment_id in everyone:
                intent = pending[payment_id]["provider_payment_id"]
                client.v1.payment_intents.confirm(intent, {"payment_method": "pm_card_visa"})
                conn.execute("SELECT payments.resync(%s)", (payment_id,))
        wait_until(lambda: all_in(url, manual, "requires_capture"), 60, sup.output)
        wait_until(lambda: all_in(url, automatic, "succeeded"), 60, sup.output)

        # --- chaos: operators act while Stripe fails and workers die ----------------------
        captures = [
            ("capture", p, None if i % 2 == 0 else PARTIAL_CAPTURE) for i, p in enumerate(manual)
        ]
        refunds = [[("refund", p, FIRST_REFUND), ("refund", p, None)] for p in automatic]
        tasks = [t for pair in zip(captures, refunds, strict=True) for t in ([pair[0]], pair[1])]
        operators = Operators(operator_url, tasks)
        standin.admin.configure(**FAULTS)
        chaos = Chaos(url)
        started = time.monotonic()
        killer = chaos.thread(chaos.kill_every_second, "killer")
        try:
            operators.run()
        finally:
            chaos.stop_kills.set()
            killer.join(timeout=30)
        chaos_seconds = time.monotonic() - started

        # --- drain: faults off, every request answered ------------------------------------
        standin.admin.configure(**NO_FAULTS)
        drain_start = time.monotonic()
        forwarded: list[dict[str, Any]] = []
        while unfinished(url) and time.monotonic() - drain_start < DRAIN_DEADLINE:
            # A retry due long after the deadline (16 s, 81 s backoffs) is brought forward.
            forwarded += query(
                url,
                "UPDATE metadata.river_job SET scheduled_at = now() WHERE state = 'retryable'"
                " AND scheduled_at > now() + interval '2 s' RETURNING id, errors",
            )
            time.sleep(0.2)
        drain_seconds = time.monotonic() - drain_start
        left = unfinished(url)
        status = sup.stop()

        at_stripe = {
            i["payment_intent"]["id"]: i["payment_intent"] for i in standin.admin.payment_intents()
        }
        stripe_refunds = standin.admin.refunds()
        events = standin.admin.events()
        faults = {k: v for k, v in standin.admin.stats()["faults"].items() if k in FAULTS}

    payments = statuses(url, everyone)
    operations = query(
        url,
        "SELECT id::text AS id, payment_id::text AS payment_id, operation, amount, status,"
        " error_message FROM payments.payment_operations",
    )
    rows = query(
        url,
        "SELECT id::text AS id, payment_id::text AS payment_id, amount, status,"
        " provider_refund_id, failure_reason FROM payments.refunds",
    )
    jobs = query(
        url,
        "SELECT id, kind, state::text AS state, attempt, errors FROM metadata.river_job"
        " WHERE kind IN ('capture_payment', 'create_refund')",
    )
    retried = Counter(j["kind"] for j in jobs if j["attempt"] > 1)
    record_summary(
        f"chaos-operations: captures={len(captures)} refunds={2 * len(refunds)} "
        f"calls={dict(operators.outcomes)} kills={len(chaos.kills)} faults={faults} "
        f"retried_jobs={dict(retried)} fast_forwarded={len(forwarded)} "
        f"chaos_phase={chaos_seconds:.0f}s drain={drain_seconds:.1f}s"
    )

    assert not chaos.errors, chaos.errors
    assert not operators.errors, operators.errors[:10]
    assert status == 0, f"supervisord exited {status}"
    assert len(chaos.kills) > 0 and sum(faults.values()) > 0
    assert not left, f"jobs unfinished after the drain: {left}"
    failed_jobs = [j for j in jobs if j["state"] != "completed"]
    assert not failed_jobs, "\n".join(
        f"{j['id']} {j['kind']} {j['state']}: {attempt_story(j['errors'])}"
        for j in failed_jobs[:10]
    )

    # Every capture: succeeded once, at Stripe too, for the amount asked.
    assert Counter((o["operation"], o["status"]) for o in operations) == {
        ("capture", "succeeded"): len(manual)
    }, [o for o in operations if o["status"] != "succeeded"][:10]
    asked = {p: a for _, p, a in captures}
    charge_of = {
        payments[p]["provider_payment_id"]: at_stripe[payments[p]["provider_payment_id"]][
            "latest_charge"
        ]
        for p in everyone
    }
    captured_events = Counter(
        e["data"]["object"]["id"] for e in events if e["type"] == "charge.captured"
    )
    for payment_id in manual:
        row = payments[payment_id]
        intent = at_stripe[row["provider_payment_id"]]
        want = asked[payment_id] or AMOUNT
        assert (row["status"], row["amount_received"]) == ("succeeded", want), row
        assert (intent["status"], intent["amount_received"]) == ("succeeded", want), intent
        assert captured_events[charge_of[intent["id"]]] == 1, f"{payment_id} captured twice"

    # Every refund row: exactly one Stripe refund (metadata.refund_id), the same amount;
    # Stripe holds none without a row; each payment refunded in full, in both books.
    assert len(rows) == 2 * len(automatic)
    by_metadata: dict[str, list[dict[str, Any]]] = {}
    for refund in stripe_refunds:
        by_metadata.setdefault(refund["metadata"].get("refund_id", ""), []).append(refund)
    assert set(by_metadata) == {r["id"] for r in rows}, "Stripe refunds without a row"
    for row in rows:
        ours = by_metadata[row["id"]]
        assert len(ours) == 1, f"refund {row['id']} made {len(ours)} times at Stripe"
        assert row["provider_refund_id"] == ours[0]["id"]
        assert (row["status"], row["amount"]) == (ours[0]["status"], ours[0]["amount"])
        assert row["status"] == "succeeded", row
    refunded_here = Counter[str]()
    for row in rows:
        refunded_here[row["payment_id"]] += row["amount"]
    refunded_there = Counter[str]()
    for refund in stripe_refunds:
        refunded_there[refund["payment_intent"]] += refund["amount"]
    for payment_id in automatic:
        intent_id = payments[payment_id]["provider_payment_id"]
        assert refunded_here[payment_id] == refunded_there[intent_id] == AMOUNT, payment_id
        amounts = sorted(r["amount"] for r in rows if r["payment_id"] == payment_id)
        assert amounts == sorted([FIRST_REFUND, AMOUNT - FIRST_REFUND])
