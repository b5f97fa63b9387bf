"""End-to-end throughput: payments/s through the real supervisord and real workers.

Payments are inserted in bulk (one INSERT ... SELECT generate_series per batch; the
payments trigger enqueues one job per payment, the statement NOTIFYs once), keeping a
backlog of at least LOW_WATER payments waiting, so the workers never run dry. Every
POLL seconds the run reads how many payments are still `pending_intent`; a payment
counts as done when its PaymentIntent and its job's completion have committed.
The rate is measured over the window after a warm-up; the worst WINDOW-second stretch
inside it is reported too ("sustained")."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import psycopg

from bench import profile
from bench.common import OTHER_BACKENDS, busy_fraction, cpu_seconds_of, machine_cpu
from bench.supervised import BenchSupervisord

LOW_WATER = 1000
BATCH = 1000
POLL = 0.25
WINDOW = 5.0

INSERT_BATCH = (
    "INSERT INTO payments.transactions (amount, currency, description) "
    "SELECT 2500, 'USD', 'bench payment ' || g FROM generate_series(1, %s) AS g"
)
BACKLOG = "SELECT count(*) FROM payments.transactions WHERE status = 'pending_intent'"
FAILED = "SELECT count(*) FROM payments.transactions WHERE status = 'failed'"


def worst_window(samples: list[tuple[float, int]], window: float) -> float:
    """The lowest completion rate over any `window` seconds of the samples."""
    worst = float("inf")
    j = 0
    for i in range(len(samples)):
        while j < len(samples) and samples[j][0] - samples[i][0] < window:
            j += 1
        if j >= len(samples):
            break
        t0, c0 = samples[i]
        t1, c1 = samples[j]
        worst = min(worst, (c1 - c0) / (t1 - t0))
    return worst if worst != float("inf") else float("nan")


def cpu_sample(
    conn: psycopg.Connection[Any], workers: list[int], standin: int | None
) -> dict[str, Any]:
    """CPU seconds so far of the workers, the stand-in and every other server process
    connected to the database (each pid → seconds, the living ones), and the machine's
    (busy, total) jiffies."""
    server = cpu_seconds_of(pid for (pid,) in conn.execute(OTHER_BACKENDS).fetchall())
    return {
        "workers": cpu_seconds_of(workers),
        "standin": cpu_seconds_of([standin] if standin else []),
        "server": server,
        "machine": machine_cpu(),
    }


def cpu_per_payment(
    before: dict[str, Any], after: dict[str, Any], payments: int
) -> dict[str, float | None]:
    """µs of CPU per payment done in the window: workers, stand-in, server; and how busy
    the machine was. A process gone by the end of the window is left out, and one that
    started in it counts from its start: the sums cover what was alive at the end."""

    def spent(a: dict[int, float], b: dict[int, float]) -> float:
        return sum(seconds - a.get(pid, 0.0) for pid, seconds in b.items())

    per = 1e6 / payments if payments else float("nan")
    standin = None
    if before["standin"] and after["standin"]:
        standin = spent(before["standin"], after["standin"]) * per
    return {
        "workers_us": spent(before["workers"], after["workers"]) * per,
        "standin_us": standin,
        "server_us": spent(before["server"], after["server"]) * per,
        "machine_busy": busy_fraction(before["machine"], after["machine"]),
    }


def run(
    dsn: str,
    worker_dsn: str,
    standin_url: str,
    workers: int,
    *,
    warmup: float,
    duration: float,
    tmp: Path,
    py_spy: Path | None = None,
    standin_pid: int | None = None,
) -> dict[str, Any]:
    """One run: the workers connect with `worker_dsn`, the inserts and counts with `dsn`.
    With `py_spy`, the first worker is sampled during the window and tmp/profile.txt
    summarises it (bench/profile.py)."""
    env = {
        "DATABASE_URL": worker_dsn,
        "STRIPE_API_KEY": "sk_test_payment_worker_bench",
        "STRIPE_API_BASE": standin_url,
        "RIVER_WORKER_COUNT": str(workers),
    }
    with (
        BenchSupervisord(env, tmp) as sup,
        psycopg.connect(dsn, autocommit=True) as conn,
    ):
        started = time.monotonic()
        sup.wait_workers(workers)
        startup_s = time.monotonic() - started

        inserted = 0
        samples: list[tuple[float, int]] = []

        def top_up(backlog: int) -> int:
            nonlocal inserted
            if backlog >= LOW_WATER:
                return backlog
            missing = LOW_WATER + BATCH - backlog
            conn.execute(INSERT_BATCH, (missing,))
            inserted += missing
            return backlog + missing

        top_up(0)
        t_begin = time.monotonic()
        spy = None
        if py_spy:
            time.sleep(warmup)
            spy = profile.start(py_spy, sup.worker_pids()[0], duration - 1, tmp / "profile.raw")
        deadline = t_begin + warmup + duration
        cpu_before: dict[str, Any] | None = None
        while True:
            now = time.monotonic()
            row = conn.execute(BACKLOG).fetchone()
            backlog = int(row[0]) if row else 0
            samples.append((now, inserted - backlog))
            if cpu_before is None and now >= t_begin + warmup:
                cpu_before = cpu_sample(conn, sup.worker_pids(), standin_pid)
            if now >= deadline:
                break
            top_up(backlog)
            time.sleep(max(0.0, POLL - (time.monotonic() - now)))
        assert cpu_before is not None
        cpu_after = cpu_sample(conn, sup.worker_pids(), standin_pid)
        memory = sup.memory()
        if spy:
            spy.wait(30)
            (tmp / "profile.txt").write_text(profile.summarize(tmp / "profile.raw"))
        row = conn.execute(FAILED).fetchone()
        failed = int(row[0]) if row else 0
        warnings = sup.error_lines()

    window = [s for s in samples if s[0] >= t_begin + warmup]
    (t0, c0), (t1, c1) = window[0], window[-1]
    return {
        "workers": workers,
        "startup_s": startup_s,
        "warmup_s": warmup,
        "window_s": t1 - t0,
        "completed_in_window": c1 - c0,
        "rate": (c1 - c0) / (t1 - t0),
        "worst_window_rate": worst_window(window, WINDOW),
        "inserted": inserted,
        "failed": failed,
        "memory": memory,
        "cpu_per_payment": cpu_per_payment(cpu_before, cpu_after, c1 - c0),
        "warnings": warnings[:5],
        "warning_count": len(warnings),
    }
