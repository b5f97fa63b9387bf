"""RPC latency: N sequential create_payment_intent_sync calls on one connection.

Part of `make bench` (bench/__main__.py starts the workers and the stand-in for it).
Alone: DATABASE_URL=... python -m bench.rpc_latency [N] against a database with the
schema deployed and workers running (`make run` does both). Times each call in-process
with psycopg, from execute() to the row in hand."""

from __future__ import annotations

import os
import sys
import time

import psycopg

from bench.common import summary_ms


def measure(
    dsn: str, calls: int = 1000, warmup: int = 20, stripe_latency_ms: float = 0.0
) -> dict[str, float]:
    """Sequential calls on one autocommit connection; a summary in ms of the timed ones,
    less `stripe_latency_ms` (the stand-in's own delay: what is left is our overhead),
    and how many times each call read the payment row (payment_read_committed).

    The warm-up calls open the session's loopback connection (once per session, by
    design) and let psycopg prepare the statement; they are not timed."""
    timings = []
    with psycopg.connect(dsn, autocommit=True) as conn:
        # Function call counts of this session only (the workers never read the row
        # through payment_read_committed): superuser setting, the bench's admin login.
        conn.execute("SET track_functions = 'pl'")
        before = _reads(conn)
        for i in range(warmup + calls):
            started = time.perf_counter()
            row = conn.execute(
                "SELECT create_payment_intent_sync(2500, %s)->>'status'", (f"bench {i}",)
            ).fetchone()
            elapsed = time.perf_counter() - started
            if row != ("pending",):
                raise RuntimeError(f"call {i} returned {row!r}")
            if i >= warmup:
                timings.append(elapsed - stripe_latency_ms / 1000)
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("SELECT 1")
    with psycopg.connect(dsn, autocommit=True) as other:
        reads = _reads(other) - before
    result = summary_ms(timings)
    result["reads_per_call"] = reads / (warmup + calls)
    return result


def _reads(conn: psycopg.Connection) -> int:
    conn.execute("SELECT pg_stat_clear_snapshot()")
    row = conn.execute(
        "SELECT coalesce(sum(calls), 0) FROM pg_stat_user_functions"
        " WHERE schemaname = 'payments' AND funcname = 'payment_read_committed'"
    ).fetchone()
    return int(row[0]) if row else 0


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    s = measure(os.environ["DATABASE_URL"], calls)
    print(
        f"rpc calls={s['n']} p50={s['p50']:.2f}ms p95={s['p95']:.2f}ms "
        f"p99={s['p99']:.2f}ms max={s['max']:.2f}ms mean={s['mean']:.2f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
