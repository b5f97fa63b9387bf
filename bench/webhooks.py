"""Webhook acknowledgement latency: a real `python -m webhooks` (uvicorn, its own
payment_webhook login) and a real database, Stripe's side played by an open-loop client.

Events arrive at a fixed rate (200/s), each a fresh event about one of our payments, so
each is 'stored' with its apply job before the 200. Latency is measured per request, from
its first byte sent to its answer read, over kept-alive connections (as Stripe's are);
'from schedule' adds any lag of the client behind its own timetable, so a receiver that
fell behind cannot hide it. The receiver's peak RSS (VmHWM) is read before it stops.

    scripts/with-env.sh .venv/bin/python -m bench --only webhooks"""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg

from bench.common import ROOT, free_port, proc_status_kb, summary_ms, wait_for

RATE = 200.0
CONNECTIONS = 8
PAYMENTS = 100
SECRET = "whsec_bench_" + uuid4().hex
# Targets of the receiver's issue.
ACK_P99_MS, RSS_MB = 10.0, 60.0


def sign(body: bytes, timestamp: int) -> str:
    """Stripe's documented scheme: v1 = hex HMAC-SHA256 of "t.payload"."""
    mac = hmac.new(SECRET.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def event_body(payment_id: str) -> bytes:
    value = {
        "id": f"evt_{uuid4().hex}",
        "object": "event",
        "api_version": "2026-11-17.clover",
        "created": int(time.time()),
        "livemode": False,
        "type": "payment_intent.succeeded",
        "data": {
            "object": {
                "id": f"pi_{uuid4().hex[:24]}",
                "object": "payment_intent",
                "amount": 2500,
                "currency": "usd",
                "status": "succeeded",
                "metadata": {"payment_id": payment_id},
            }
        },
    }
    return json.dumps(value, separators=(",", ":")).encode()


def run(
    dsn: str, webhook_dsn: str, tmp: Path, *, rate: float, warmup: float, duration: float
) -> dict[str, Any]:
    """One run: payments inserted with `dsn` (the admin), the receiver on `webhook_dsn`."""
    tmp.mkdir(parents=True, exist_ok=True)
    with psycopg.connect(dsn, autocommit=True) as conn:
        payments = [
            str(row[0])
            for row in conn.execute(
                "INSERT INTO payments.transactions (amount, currency, description)"
                " SELECT 2500, c.currency, 'webhook bench ' || n"
                " FROM payments.config AS c, generate_series(1, %s) AS n RETURNING id",
                (PAYMENTS,),
            )
        ]
    total = int(rate * (warmup + duration))
    now = int(time.time())
    deliveries = []
    for i in range(total):
        body = event_body(payments[i % len(payments)])
        deliveries.append((body, sign(body, now)))

    port = free_port()
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "DATABASE_URL": webhook_dsn,
        "STRIPE_API_KEY": "sk_test_payment_worker_bench",
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp / "metrics"),
        "LOG_LEVEL": "WARNING",
    }
    (tmp / "metrics").mkdir(exist_ok=True)
    with (tmp / "receiver.log").open("ab") as log:
        receiver = subprocess.Popen(
            [sys.executable, "-m", "webhooks"],
            cwd=ROOT,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for(lambda: _healthy(port), 20, "the receiver's /healthz")
        rss_idle_kb = proc_status_kb(receiver.pid, "VmRSS") or 0
        records = _drive(port, deliveries, rate)
        hwm_kb = proc_status_kb(receiver.pid, "VmHWM") or 0
    finally:
        receiver.send_signal(signal.SIGTERM)
        try:
            status = receiver.wait(30)
        except subprocess.TimeoutExpired:
            receiver.kill()
            status = receiver.wait()
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM payments.stripe_events WHERE outcome = 'pending'),"
            " (SELECT count(*) FROM metadata.river_job WHERE kind = 'apply_stripe_event')"
        ).fetchone()
        assert row is not None
    start = records[0][1] if records else 0.0
    window = [r for r in records if r[1] >= start + warmup]
    statuses = Counter(str(r[4]) for r in records)
    span = (window[-1][3] - window[0][2]) if len(window) > 1 else 0.0
    return {
        "rate": rate,
        "connections": CONNECTIONS,
        "warmup_s": warmup,
        "duration_s": duration,
        "sent": len(records),
        "statuses": dict(statuses),
        "achieved_rate": (len(window) / span) if span else 0.0,
        "ack_ms": summary_ms([end - begin for _, _, begin, end, _ in window]),
        "from_schedule_ms": summary_ms([end - due for _, due, _, end, _ in window]),
        "stored_events": int(row[0]),
        "apply_jobs": int(row[1]),
        "receiver_rss_idle_kb": rss_idle_kb,
        "receiver_hwm_kb": hwm_kb,
        "receiver_exit": status,
    }


def _healthy(port: int) -> bool:
    try:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
        conn.request("GET", "/healthz")
        ok = conn.getresponse().status == 200
        conn.close()
        return ok
    except OSError:
        return False


def _drive(
    port: int, deliveries: list[tuple[bytes, str]], rate: float
) -> list[tuple[int, float, float, float, int]]:
    """Sends delivery i at start + i / rate; (i, due, sent, answered, status) each."""
    lock = threading.Lock()
    following = iter(range(len(deliveries)))
    records: list[tuple[int, float, float, float, int]] = []
    start = time.perf_counter() + 0.2

    def client() -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        mine = []
        while True:
            with lock:
                i = next(following, None)
            if i is None:
                break
            due = start + i / rate
            pause = due - time.perf_counter()
            if pause > 0:
                time.sleep(pause)
            body, sig = deliveries[i]
            headers = {"Content-Type": "application/json", "Stripe-Signature": sig}
            sent = time.perf_counter()
            try:
                conn.request("POST", "/webhooks/stripe", body=body, headers=headers)
                response = conn.getresponse()
                response.read()
                code = response.status
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                code = 0
            mine.append((i, due, sent, time.perf_counter(), code))
        conn.close()
        with lock:
            records.extend(mine)

    threads = [threading.Thread(target=client, daemon=True) for _ in range(CONNECTIONS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return sorted(records)


def rows(result: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    """Its lines of the `make bench` table (bench/report.py)."""
    from bench.report import check_max, mb

    ack, late = result["ack_ms"], result["from_schedule_ms"]
    ok = result["statuses"].get("200", 0)
    what = (
        f"Webhook ack latency at {result['rate']:g} events/s ({ack['n']} events, "
        f"{result['connections']} kept-alive connections; {ok}/{result['sent']} answered 200)"
    )
    peak = mb(result["receiver_hwm_kb"])
    return [
        (
            "6",
            what,
            f"p50 {ack['p50']:.2f}, p99 {ack['p99']:.2f}, max {ack['max']:.1f} ms "
            f"(from schedule: p99 {late['p99']:.2f})",
            f"p99 ≤ {ACK_P99_MS:g} ms",
            check_max([("p99", ack["p99"], ACK_P99_MS, "ms")]),
        ),
        (
            "6",
            "Peak RSS (VmHWM) of the receiver",
            f"{peak:.1f} MB (idle {mb(result['receiver_rss_idle_kb']):.1f} MB)",
            f"≤ {RSS_MB:g} MB",
            check_max([("", peak, RSS_MB, "MB")]),
        ),
    ]
