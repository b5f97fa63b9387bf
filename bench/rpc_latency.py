"""RPC latency: N sequential create_payment_intent_sync calls on one connection.

Usage: DATABASE_URL=... python bench/rpc_latency.py [N]
Needs the schema deployed and workers running (`make run` does both). Times
each call in-process with psycopg, from execute() to the row in hand."""

from __future__ import annotations

import os
import statistics
import sys
import time

import psycopg


def percentile(sorted_ms: list[float], p: float) -> float:
    index = min(len(sorted_ms) - 1, max(0, round(p / 100 * len(sorted_ms)) - 1))
    return sorted_ms[index]


def main() -> int:
    calls = int(sys.argv[1]) if len(sys.argv) > 1 else 500
    with psycopg.connect(os.environ["DATABASE_URL"], autocommit=True) as conn:
        conn.execute("SELECT create_payment_intent_sync(2500, 'warm-up')")
        timings = []
        for i in range(calls):
            started = time.perf_counter()
            row = conn.execute(
                "SELECT create_payment_intent_sync(2500, %s)->>'status'", (f"bench {i}",)
            ).fetchone()
            timings.append((time.perf_counter() - started) * 1000)
            if row != ("pending",):
                print(f"call {i} returned {row!r}", file=sys.stderr)
                return 1
    timings.sort()
    print(
        f"rpc calls={calls} p50={percentile(timings, 50):.2f}ms "
        f"p95={percentile(timings, 95):.2f}ms "
        f"p99={percentile(timings, 99):.2f}ms max={timings[-1]:.2f}ms "
        f"mean={statistics.fmean(timings):.2f}ms"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
