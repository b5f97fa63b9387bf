"""The peers, procrastinate and pgqueuer, with a no-op job, for bench/noop.py.

Runs from bench/.venv-peers (bench/requirements-peers.txt). Each is used the way its
documentation shows: its own schema installer, its own enqueue API (one call per job,
its batch API for the pre-inserted jobs), its own worker loop with LISTEN/NOTIFY, an
async no-op task, and defaults everywhere except the concurrency (10 jobs at once per
process, as ours: pgqueuer's concurrency_limit, and its dequeue size batch_size the
same)."""

from __future__ import annotations

import asyncio
import json
import signal
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib.metadata import version
from typing import Any

Records = list[tuple[int, float | None, float]]


class Procrastinate:
    label = "procrastinate"
    remaining_sql = "SELECT count(*) FROM procrastinate_jobs WHERE status <> 'succeeded'"

    def version(self) -> str:
        return version("procrastinate")

    def _app(self, dsn: str, records: Records | None = None) -> tuple[Any, Any]:
        import procrastinate

        app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))

        @app.task(name="noop", queue="bench")
        async def noop(n: int, t0: float | None = None) -> None:
            started = time.monotonic()
            if records is not None:
                records.append((n, t0, started))

        return app, noop

    async def setup(self, dsn: str) -> None:
        app, _ = self._app(dsn)
        async with app.open_async():
            await app.schema_manager.apply_schema_async()

    async def bulk_insert(self, dsn: str, n: int) -> None:
        app, noop = self._app(dsn)
        async with app.open_async():
            await noop.batch_defer_async(*({"n": i} for i in range(n)))

    @asynccontextmanager
    async def enqueuer(self, dsn: str) -> AsyncIterator[Callable[[int, float], Any]]:
        app, noop = self._app(dsn)
        async with app.open_async():

            async def enqueue(n: int, t0: float) -> None:
                await noop.defer_async(n=n, t0=t0)

            yield enqueue

    def worker(
        self, dsn: str, concurrency: int, records: Records, ready: Callable[[], None]
    ) -> None:
        app, _ = self._app(dsn, records)
        ready()

        async def run() -> None:
            async with app.open_async():
                # Its own SIGTERM handling: stop fetching, finish the jobs in hand.
                await app.run_worker_async(
                    queues=["bench"], concurrency=concurrency, install_signal_handlers=True
                )

        asyncio.run(run())


class PgQueuer:
    label = "pgqueuer"
    remaining_sql = "SELECT count(*) FROM pgqueuer"

    def version(self) -> str:
        return version("pgqueuer")

    @asynccontextmanager
    async def _queries(self, dsn: str) -> AsyncIterator[Any]:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries

        conn = await asyncpg.connect(dsn)
        try:
            yield Queries(AsyncpgDriver(conn))
        finally:
            await conn.close()

    async def setup(self, dsn: str) -> None:
        async with self._queries(dsn) as queries:
            await queries.install()

    async def bulk_insert(self, dsn: str, n: int) -> None:
        async with self._queries(dsn) as queries:
            await queries.enqueue(
                ["noop"] * n, [json.dumps({"n": i}).encode() for i in range(n)], [0] * n
            )

    @asynccontextmanager
    async def enqueuer(self, dsn: str) -> AsyncIterator[Callable[[int, float], Any]]:
        async with self._queries(dsn) as queries:

            async def enqueue(n: int, t0: float) -> None:
                await queries.enqueue("noop", json.dumps({"n": n, "t0": t0}).encode())

            yield enqueue

    def worker(
        self, dsn: str, concurrency: int, records: Records, ready: Callable[[], None]
    ) -> None:
        import asyncpg
        from pgqueuer import AsyncpgDriver, Queries, QueueManager

        async def run() -> None:
            conn = await asyncpg.connect(dsn)
            qm = QueueManager(Queries(AsyncpgDriver(conn)))

            # batch_size is how many it dequeues per statement, not a cap on jobs
            # running at once: concurrency_limit is, as for the other systems.
            @qm.entrypoint("noop", concurrency_limit=concurrency)
            async def noop(job: Any) -> None:
                started = time.monotonic()
                payload = json.loads(job.payload)
                records.append((payload["n"], payload.get("t0"), started))

            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGTERM, qm.shutdown.set)
            ready()
            try:
                await qm.run(batch_size=concurrency)
            finally:
                await conn.close()

        asyncio.run(run())


SYSTEMS: dict[str, Callable[[], Any]] = {"procrastinate": Procrastinate, "pgqueuer": PgQueuer}
