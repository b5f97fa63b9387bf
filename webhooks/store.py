"""The receiver's one module that runs SQL (webhooks/sql/receiver.sql), on psycopg's async pool."""

from __future__ import annotations

from typing import Any

import psycopg
from psycopg_pool import AsyncConnectionPool

from common import schema, sqlfiles

Q = sqlfiles.load("webhooks.sql")

OUTCOMES = ("stored", "duplicate", "ignored")
# How long a request waits for a connection, and a statement may run: Stripe waits up to
# its own timeout for an answer; better a quick 503 (it retries) than a hang.
CONNECTION_WAIT_SECONDS = 5.0
STATEMENT_TIMEOUT_MS = 5000
# On the way out: how long the pool waits for its connections to be returned.
POOL_CLOSE_SECONDS = 5.0


class StoreUnavailable(Exception):
    """The database could not record the event; nothing is known to be committed."""


class InvalidEvent(Exception):
    """The database refused the event's shape (payments.require, or JSON it cannot hold)."""


class EventStore:
    def __init__(self, conninfo: str, pool_size: int) -> None:
        self._pool: AsyncConnectionPool[psycopg.AsyncConnection[Any]] = AsyncConnectionPool(
            conninfo,
            min_size=1,
            max_size=pool_size,
            open=False,
            timeout=CONNECTION_WAIT_SECONDS,
            # After an outage the pool's connections are dead: each is checked as it is
            # handed out, so the first request after recovery does not fail on one.
            check=AsyncConnectionPool.check_connection,
            kwargs={
                "autocommit": True,
                "connect_timeout": 5,
                "application_name": "payment-worker webhooks",
                "options": f"-c statement_timeout={STATEMENT_TIMEOUT_MS}",
            },
            name="webhooks",
        )

    async def open(self) -> None:
        """Starts connecting in the background: the receiver listens even while the
        database is down (and answers 503 until it is back)."""
        await self._pool.open(wait=False)

    async def close(self) -> None:
        await self._pool.close(timeout=POOL_CLOSE_SECONDS)

    async def record(self, event_text: str) -> str:
        """Stores a verified event with its job, committed on return: its outcome."""
        try:
            async with self._pool.connection() as conn:
                cur = await conn.execute(Q["record_event"], {"event": event_text})
                row = await cur.fetchone()
        except psycopg.DataError as exc:
            # Its message may quote the payload: only the SQLSTATE goes on.
            raise InvalidEvent(exc.sqlstate or type(exc).__name__) from None
        except (psycopg.Error, OSError) as exc:
            # PoolTimeout is a psycopg.OperationalError too.
            reason = schema.NOT_DEPLOYED if schema.is_missing(exc) else type(exc).__name__
            raise StoreUnavailable(reason) from exc
        outcome = str(row[0]) if row else ""
        if outcome not in OUTCOMES:
            raise StoreUnavailable(f"unexpected outcome {outcome!r}")
        return outcome

    async def ping(self, timeout: float = 2.0) -> None:
        try:
            async with self._pool.connection(timeout=timeout) as conn:
                await conn.execute(Q["ping"])
        except (psycopg.Error, OSError) as exc:
            raise StoreUnavailable(type(exc).__name__) from exc
