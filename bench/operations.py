"""capture_payment and refund_payment latency: the operator's RPCs, stand-in at 0 ms.

The repo's supervisord.conf runs the workers and the webhook receiver (each as its own
least-privileged login), as in production; the stand-in answers at 0 ms and delivers its
signed webhooks to the receiver. Setup, untimed: payments inserted (half of them
capture_method manual), their intents made by the workers, paid with pm_card_visa
through the stand-in's API, then followed through the event path until the manual ones
are requires_capture (with their capture_before) and the others succeeded. Then, as the
create RPC is measured (section 1), webhook delivery is switched off and the queue left
to drain (the measured calls compete with no event processing), and, on one
connection of a payment_operator login, sequential `capture_payment(id)` calls (each
payment captured in full), then sequential `refund_payment(id, 1000)` calls (one partial
refund of each succeeded payment), each timed in-process from execute() to the row in
hand; the first calls of each kind open the session's loopback and are not timed.

    scripts/with-env.sh .venv/bin/python -m bench --only operations"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, LiteralString

import psycopg
import stripe
from stripe_standin.process import StandinProcess

from bench.common import free_port, summary_ms, wait_for, webhook_env
from bench.supervised import BenchSupervisord

WORKERS = 1  # as the create RPC's line (section 1): the default
CALLS = 300
WARMUP = 10
REFUND_CENTS = 1000


def run(
    dsn: str,
    worker_dsn: str,
    webhook_dsn: str,
    operator_dsn: str,
    tmp: Path,
    *,
    calls: int = CALLS,
) -> dict[str, Any]:
    """One run; `dsn` is the admin's (setup inserts and checks)."""
    port = free_port()
    secret = "whsec_" + secrets.token_hex(24)
    count = WARMUP + calls
    with StandinProcess(
        latency_ms=0,
        quiet=True,
        webhook_url=f"http://127.0.0.1:{port}/webhooks/stripe",
        webhook_secret=secret,
    ) as standin:
        env = webhook_env(
            worker_dsn, webhook_dsn, standin.url, secret=secret, port=port, workers=WORKERS
        )
        with BenchSupervisord(env, tmp) as sup, psycopg.connect(dsn, autocommit=True) as conn:
            sup.wait_workers(WORKERS)
            manual = paid_payments(conn, standin.url, count, "manual", "requires_capture")
            automatic = paid_payments(conn, standin.url, count, "automatic", "succeeded")
            # Measured as the create RPC is (section 1): no webhooks, an idle queue.
            standin.admin.configure_webhooks(enabled=False)
            wait_for(idle(conn), 120, "the setup's jobs to finish")
            with psycopg.connect(operator_dsn, autocommit=True) as operator:
                capture = timed(
                    operator,
                    "SELECT capture_payment(%s)->>'status'",
                    [(p,) for p in manual],
                    "succeeded",
                )
                refund = timed(
                    operator,
                    "SELECT refund_payment(%s, %s)->>'status'",
                    [(p, REFUND_CENTS) for p in automatic],
                    "succeeded",
                )
            stand_in = standin.admin.stats()
            warnings = sup.error_lines()
    return {
        "calls": calls,
        "workers": WORKERS,
        "capture_ms": capture,
        "refund_ms": refund,
        "standin_refunds": stand_in.get("refunds_created"),
        "standin_captures": stand_in.get("payment_intents_captured"),
        "warnings": warnings[:20],
    }


def paid_payments(
    conn: psycopg.Connection[Any], api: str, count: int, capture_method: str, status: str
) -> list[str]:
    """`count` new payments, paid by card, once the event path has made them `status`."""
    ids = [
        str(row[0])
        for row in conn.execute(
            "INSERT INTO payments.transactions (amount, currency, description, capture_method)"
            " SELECT 2500, c.currency, 'operations bench ' || n, %s"
            " FROM payments.config AS c, generate_series(1, %s) AS n RETURNING id",
            (capture_method, count),
        )
    ]
    intent_of = wait_for(in_status(conn, ids, "pending"), 120, f"intents for {count} payments")
    client = stripe.StripeClient("sk_test_bench_customer", base_addresses={"api": api})
    for payment_id in ids:
        client.v1.payment_intents.confirm(intent_of[payment_id], {"payment_method": "pm_card_visa"})
    wait_for(in_status(conn, ids, status), 120, f"{count} payments {status}")
    return ids


def in_status(
    conn: psycopg.Connection[Any], ids: list[str], status: str
) -> Callable[[], dict[str, str] | None]:
    """A probe: {payment: intent} once every payment of `ids` is `status`."""

    def probe() -> dict[str, str] | None:
        rows = conn.execute(
            "SELECT id::text, provider_payment_id FROM payments.transactions"
            " WHERE id = ANY(%s::uuid[]) AND status = %s"
            " AND (status <> 'requires_capture' OR capture_before IS NOT NULL)",
            (ids, status),
        ).fetchall()
        return {r[0]: r[1] for r in rows} if len(rows) == len(ids) else None

    return probe


def idle(conn: psycopg.Connection[Any]) -> Callable[[], bool]:
    """A probe: no job waits or runs."""

    def probe() -> bool:
        row = conn.execute(
            "SELECT count(*) FROM metadata.river_job WHERE state IN ('available', 'running')"
        ).fetchone()
        return row is not None and row[0] == 0

    return probe


def timed(
    conn: psycopg.Connection[Any], query: LiteralString, calls: list[tuple[Any, ...]], expected: str
) -> dict[str, Any]:
    """Each call in turn; a summary in ms of all but the first WARMUP."""
    timings = []
    for i, params in enumerate(calls):
        started = time.perf_counter()
        row = conn.execute(query, params).fetchone()
        elapsed = time.perf_counter() - started
        if row != (expected,):
            raise RuntimeError(f"call {i} ({query}) returned {row!r}")
        if i >= WARMUP:
            timings.append(elapsed)
    return summary_ms(timings)


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Its lines of the `make bench` table (bench/report.py): no target of its own (the
    issue asks for the numbers)."""
    out = []
    for name, key in (("capture_payment", "capture_ms"), ("refund_payment", "refund_ms")):
        s = result[key]
        out.append(
            (
                "7",
                f"{name} latency ({s['n']} calls in a row, stand-in 0 ms, "
                f"{result['workers']} worker)",
                f"p50 {s['p50']:.2f}, p95 {s['p95']:.2f}, p99 {s['p99']:.2f} ms",
                "-",
                "-",
            )
        )
    return out
