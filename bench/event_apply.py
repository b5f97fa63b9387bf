"""Event received → payment row updated: the whole webhook path with real processes.

The repo's supervisord.conf runs the workers and the receiver (each as its own least-
privileged login); the stand-in answers at 0 ms and delivers its signed webhooks to the
receiver. Payments are created (intents made by the workers), then paid with pm_card_visa
through the stand-in's API at a steady pace. For each payment, the latency is from the
moment the receiver recorded its payment_intent.succeeded event (stripe_events.received_at,
the database clock) to the moment a LISTENer of payments.payment_status heard the payment
become succeeded (this machine's clock, which is the database's). That includes the apply
job's wake-up, claim, the fresh retrieve from Stripe and the write.

    scripts/with-env.sh .venv/bin/python -m bench --only events"""

from __future__ import annotations

import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import psycopg
import stripe
from stripe_standin.process import StandinProcess

from bench.common import free_port, summary_ms, wait_for, webhook_env
from bench.supervised import BenchSupervisord

WORKERS = 2
PAYMENTS = 300
PACE_SECONDS = 0.02  # 50 payments a second
APPLY_P99_MS = 50.0  # the target


def run(dsn: str, worker_dsn: str, webhook_dsn: str, tmp: Path) -> dict[str, Any]:
    """One run; `dsn` is the admin's (inserts, LISTEN, reads)."""
    port = free_port()
    secret = "whsec_" + secrets.token_hex(24)
    with StandinProcess(
        quiet=True, webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe", webhook_secret=secret
    ) as standin:
        env = webhook_env(
            worker_dsn, webhook_dsn, standin.url, secret=secret, port=port, workers=WORKERS
        )
        with BenchSupervisord(env, tmp) as sup, psycopg.connect(dsn, autocommit=True) as conn:
            sup.wait_workers(WORKERS)
            ids = [
                str(row[0])
                for row in conn.execute(
                    "INSERT INTO payments.transactions (amount, currency, description)"
                    " SELECT 2500, c.currency, 'event bench ' || n"
                    " FROM payments.config AS c, generate_series(1, %s) AS n RETURNING id",
                    (PAYMENTS,),
                )
            ]

            def intents() -> dict[str, str] | None:
                rows = conn.execute(
                    "SELECT id::text, provider_payment_id FROM payments.transactions"
                    " WHERE status = 'pending'"
                ).fetchall()
                return {r[0]: r[1] for r in rows} if len(rows) == PAYMENTS else None

            intent_of: dict[str, str] = wait_for(intents, 60, "intents for every payment")
            heard = listen_succeeded(dsn, set(ids))
            client = stripe.StripeClient(
                "sk_test_bench_customer", base_addresses={"api": standin.url}
            )
            started = time.monotonic()
            for i, payment_id in enumerate(ids):
                time.sleep(max(0.0, started + i * PACE_SECONDS - time.monotonic()))
                client.v1.payment_intents.confirm(
                    intent_of[payment_id], {"payment_method": "pm_card_visa"}
                )
            heard.done.wait(60)
            received = dict(
                conn.execute(
                    "SELECT payment_id::text, extract(epoch FROM received_at)::float8"
                    " FROM payments.stripe_events WHERE type = 'payment_intent.succeeded'"
                ).fetchall()
            )
            heard.stop()
            receiver_hwm = next(
                (r["hwm_kb"] for r in sup.memory()["processes"] if r["name"] == "webhooks"), None
            )
    latencies = [heard.at[p] - received[p] for p in ids if p in heard.at and p in received]
    return {
        "payments": PAYMENTS,
        "workers": WORKERS,
        "pace_per_s": 1 / PACE_SECONDS,
        "measured": len(latencies),
        "apply_ms": summary_ms(latencies),
        "receiver_hwm_kb": receiver_hwm,
        "target_p99_ms": APPLY_P99_MS,
    }


class Heard:
    """A LISTENer of payments.payment_status: when each payment was heard succeeded."""

    def __init__(self, dsn: str, waiting: set[str]) -> None:
        self.at: dict[str, float] = {}
        self.done = threading.Event()
        self._waiting = waiting
        self._conn = psycopg.connect(dsn, autocommit=True)
        self._conn.execute('LISTEN "payments.payment_status"')
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            for note in self._conn.notifies(timeout=0.2):
                now = time.time()
                body = json.loads(note.payload)
                if body.get("status") == "succeeded" and body["payment_id"] in self._waiting:
                    self.at.setdefault(body["payment_id"], now)
                    if len(self.at) == len(self._waiting):
                        self.done.set()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._conn.close()


def listen_succeeded(dsn: str, waiting: set[str]) -> Heard:
    return Heard(dsn, waiting)


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Its line of the `make bench` table (bench/report.py)."""
    from bench.report import check_max

    applied = result["apply_ms"]
    return [
        (
            "6",
            f"Event received → payment row updated, stand-in at 0 ms ({result['measured']}/"
            f"{result['payments']} payments paid at {result['pace_per_s']:g}/s, "
            f"{result['workers']} workers)",
            f"p50 {applied['p50']:.2f}, p99 {applied['p99']:.2f}, max {applied['max']:.1f} ms",
            f"p99 ≤ {APPLY_P99_MS:g} ms",
            check_max([("p99", applied["p99"], APPLY_P99_MS, "ms")]),
        )
    ]
