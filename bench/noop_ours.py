"""Our queue core with a no-op job kind, for bench/noop.py.

The worker is wired exactly as worker/service.py wires a real one - the same pool
settings, Store, JobExecutor, Producer, InsertListener and leader-elected maintenance
loops - with one difference: its only handler is `bench_noop`, which records when it
started and returns. Nothing of it lives in worker/."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from bench.common import ROOT

QUEUE = "bench"
KIND = "bench_noop"

INSERT_ONE = (
    "INSERT INTO metadata.river_job (args, kind, max_attempts, queue) VALUES (%s, %s, 5, %s)"
)
INSERT_MANY = (
    "INSERT INTO metadata.river_job (args, kind, max_attempts, queue) "
    "SELECT jsonb_build_object('n', g), %s, 5, %s FROM generate_series(0, %s - 1) AS g"
)


class Ours:
    label = "payment-worker queue core"
    remaining_sql = (
        f"SELECT count(*) FROM metadata.river_job WHERE queue = '{QUEUE}' AND state <> 'completed'"
    )

    def version(self) -> str:
        commit = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        return f"this checkout ({commit or 'unknown commit'})"

    async def setup(self, dsn: str) -> None:
        """The database is a clone of the sqitch-deployed schema: only its queue is ours."""
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute("UPDATE payments.config SET queue = %s", (QUEUE,))

    async def bulk_insert(self, dsn: str, n: int) -> None:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:
            await conn.execute(INSERT_MANY, (KIND, QUEUE, n))

    @asynccontextmanager
    async def enqueuer(self, dsn: str) -> AsyncIterator[Callable[[int, float], Any]]:
        async with await psycopg.AsyncConnection.connect(dsn, autocommit=True) as conn:

            async def enqueue(n: int, t0: float) -> None:
                await conn.execute(INSERT_ONE, (Jsonb({"n": n, "t0": t0}), KIND, QUEUE))

            yield enqueue

    def claim_plan(self, dsn: str) -> dict[str, Any]:
        """The claim's plan on this never-analysed table, custom and generic: the query
        inside payments.job_claim, as auto_explain reports it, in a transaction that is
        rolled back (the claim is an UPDATE)."""
        from worker.queries import QUERIES

        found: dict[str, Any] = {}
        with psycopg.connect(dsn, autocommit=True) as conn:
            row = conn.execute(
                "SELECT last_analyze, last_autoanalyze, n_live_tup, n_mod_since_analyze "
                "FROM pg_stat_user_tables WHERE relid = 'metadata.river_job'::regclass"
            ).fetchone()
            found["analysed_before"] = bool(row and (row[0] or row[1]))
            found["live_rows"] = row[2] if row else None
            plans: list[str] = []
            conn.add_notice_handler(lambda diag: plans.append(diag.message_primary or ""))
            conn.execute("LOAD 'auto_explain'")
            for mode in ("force_custom_plan", "force_generic_plan"):
                plans.clear()
                with conn.transaction(force_rollback=True):
                    for setting in (
                        f"plan_cache_mode = {mode}",
                        "auto_explain.log_min_duration = 0",
                        "auto_explain.log_analyze = on",
                        "auto_explain.log_timing = off",
                        "auto_explain.log_nested_statements = on",
                        "auto_explain.log_level = notice",
                    ):
                        conn.execute(f"SET LOCAL {setting}")
                    conn.execute(
                        QUERIES["job_get_available"],
                        {"max_to_lock": 10, "attempted_by": "bench-explain"},
                    ).fetchall()
                (plan,) = [plan for plan in plans if "SKIP LOCKED" in plan]
                lines = plan.splitlines()
                # After "duration" and the query's text (indented past its first line),
                # the plan's root is the first line flush left.
                text = next(i for i, line in enumerate(lines) if line.startswith("Query Text:"))
                root = next(i for i in range(text + 1, len(lines)) if not lines[i][:1].isspace())
                found[mode] = lines[root:]
        return found

    def worker(
        self,
        dsn: str,
        concurrency: int,
        records: list[tuple[int, float | None, float]],
        ready: Callable[[], None],
    ) -> None:
        from psycopg_pool import ConnectionPool
        from worker.executor import JobExecutor
        from worker.jobs import Done, Kinds
        from worker.listener import InsertListener
        from worker.maintenance import Cleaner, Leadership, Rescuer, Scheduler
        from worker.models import Job
        from worker.producer import Producer
        from worker.store import CONNECTION_PARAMS, Store

        from common import jsonlog

        def noop(job: Job) -> Done:
            started = time.monotonic()
            records.append((job.args["n"], job.args.get("t0"), started))
            return Done()

        kinds = Kinds()
        kinds.register(KIND, noop, given_up=None)

        jsonlog.configure("INFO")
        worker_id = f"bench:{os.getpid()}"
        pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=4,
            kwargs={
                "autocommit": True,
                "application_name": f"payment-worker {worker_id}",
                **CONNECTION_PARAMS,
            },
            check=ConnectionPool.check_connection,
            name="worker",
            open=False,
        )
        pool.open(wait=True, timeout=10)
        store = Store(pool, dsn)
        stop, wake = threading.Event(), threading.Event()
        producer = Producer(
            store,
            JobExecutor(store, kinds),
            worker_id=worker_id,
            concurrency=concurrency,
            poll_interval=1.0,
            wake=wake,
            stop=stop,
        )
        leadership = Leadership(store, stop=stop)
        loops: dict[str, Callable[[], None]] = {
            "listener": InsertListener(dsn, QUEUE, wake, stop).run,
            "leadership": leadership.run,
            "scheduler": Scheduler(store, leadership, queue=QUEUE, wake=wake, stop=stop).run,
            "rescuer": Rescuer(store, leadership, queue=QUEUE, stop=stop).run,
            "cleaner": Cleaner(store, leadership, queue=QUEUE, stop=stop).run,
        }

        def request_stop(_signum: int, _frame: object) -> None:
            stop.set()
            wake.set()

        signal.signal(signal.SIGTERM, request_stop)
        signal.signal(signal.SIGINT, request_stop)
        ready()
        threads = [threading.Thread(target=f, name=n, daemon=True) for n, f in loops.items()]
        for thread in threads:
            thread.start()
        try:
            producer.run()
        finally:
            for thread in threads:
                thread.join(timeout=5)
            store.close()
            pool.close()
