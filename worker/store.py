"""The one module that runs SQL: every query of worker/sql/ is executed here."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from typing import Any
from uuid import UUID

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from worker.models import Job, Payment, PaymentIntent, QueueSettings, RescuedJob
from worker.queries import QUERIES as Q

# Advisory-lock namespace of this project's job leases and leader lock
# ('pwk1'); the second key is the job id mod 2^31-1, or -1 for the leader.
LEASE_NAMESPACE = 0x70776B31

# Notice a dead peer within about 10 s instead of TCP's minutes: keepalive
# probes on an idle socket, and a bound on unacknowledged writes.
KEEPALIVE_PARAMS: dict[str, Any] = {
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}


class DedicatedConnection:
    """A connection kept out of the pool because its session holds locks.

    Reconnects lazily after a failure; `generation` counts incarnations, so a
    lock taken on an earlier one is known to be gone with it."""

    def __init__(
        self, conninfo: str, application_name: str, *, synchronous_commit: bool = True
    ) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._synchronous_commit = synchronous_commit
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()
        self.generation = 0

    def execute(self, query: Any, params: dict[str, Any]) -> tuple[list[dict[str, Any]], int]:
        """Runs one autocommit statement: its rows and the generation it ran on."""
        with self._lock:
            if self._conn is None or self._conn.closed:
                conn = psycopg.connect(
                    self._conninfo,
                    autocommit=True,
                    row_factory=dict_row,
                    application_name=self._application_name,
                    **KEEPALIVE_PARAMS,
                )
                if not self._synchronous_commit:
                    try:
                        conn.execute(Q["session_asynchronous_commit"])
                    except BaseException:
                        conn.close()
                        raise
                self._conn = conn
                self.generation += 1
            try:
                cur = self._conn.execute(query, params)
                rows = cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self._close()
                raise
            return rows, self.generation

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class NotificationConnection:
    """LISTEN, on a connection of its own.

    Kept out of the pool: psycopg holds a connection while it waits for
    notifications, and a query queued behind that wait would stall."""

    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None

    def ensure(self) -> bool:
        """Connects and LISTENs unless already done; True when it (re)connected."""
        if self._conn is not None and not self._conn.closed:
            return False
        self._conn = psycopg.connect(
            self._conninfo,
            autocommit=True,
            application_name="payment-worker listener",
            **KEEPALIVE_PARAMS,
        )
        self._conn.execute(Q["listen_insert"])
        return True

    def payloads(self, timeout: float) -> Iterator[str]:
        """The payloads that arrive within `timeout` seconds, as they arrive."""
        if self._conn is None:
            raise psycopg.OperationalError("not connected")
        for notify in self._conn.notifies(timeout=timeout):
            yield notify.payload

    def ping(self) -> None:
        if self._conn is None:
            raise psycopg.OperationalError("not connected")
        self._conn.execute(Q["connection_ping"])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Store:
    """Queries against a connection pool, plus the two connections whose
    session state matters: job leases (claims happen there too) and leadership.
    Each public method is one transaction."""

    def __init__(self, pool: ConnectionPool, conninfo: str | None = None) -> None:
        self._pool = pool
        if conninfo is None:
            conninfo = pool.conninfo if isinstance(pool.conninfo, str) else pool.conninfo()
        # Claims commit without waiting for the WAL flush (see jobs.sql,
        # session_asynchronous_commit); outcomes, on the pool, always wait for it.
        self._leases = DedicatedConnection(
            conninfo, "payment-worker leases", synchronous_commit=False
        )
        self._leader = DedicatedConnection(conninfo, "payment-worker leader")

    def close(self) -> None:
        """Closes the dedicated connections: every lease and the leadership go with them."""
        self._leases.close()
        self._leader.close()

    def config_get(self) -> QueueSettings:
        with self._pool.connection() as conn:
            row = conn.execute(Q["config_get"]).fetchone()
        if row is None:
            raise LookupError("payments.config has no row: is the schema deployed?")
        return QueueSettings(currency=row[0], queue=row[1])

    def job_get_available(self, queue: str, max_to_lock: int, attempted_by: str) -> list[Job]:
        params = {
            "queue": queue,
            "max_to_lock": max_to_lock,
            "attempted_by": attempted_by,
            "lease_namespace": LEASE_NAMESPACE,
        }
        rows, generation = self._leases.execute(Q["job_get_available"], params)
        jobs = [Job(**row, lease_generation=generation) for row in rows]
        return sorted(jobs, key=lambda j: (j.priority, j.scheduled_at, j.id))

    def job_lease_release(self, job: Job) -> None:
        """Gives the job's lease back; a no-op when it died with an earlier connection."""
        if job.leased and job.lease_generation == self._leases.generation:
            self._leases.execute(
                Q["job_lease_release"], {"id": job.id, "lease_namespace": LEASE_NAMESPACE}
            )

    def job_schedule_due(self, queue: str, max_jobs: int) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(Q["job_schedule_due"], {"queue": queue, "max": max_jobs}).fetchone()
        return 0 if row is None else int(row[0])

    def job_rescue_orphaned(
        self, queue: str, stuck_after_seconds: float, max_jobs: int, error: str
    ) -> list[RescuedJob]:
        params = {
            "queue": queue,
            "stuck_after_seconds": stuck_after_seconds,
            "max": max_jobs,
            "error": error,
            "lease_namespace": LEASE_NAMESPACE,
        }
        with self._pool.connection() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(Q["job_rescue_orphaned"], params)
            return [RescuedJob(**row) for row in rows]

    def job_clean_finalized(
        self, queue: str, completed_seconds: float, discarded_seconds: float, batch: int
    ) -> int:
        params = {
            "queue": queue,
            "completed_seconds": completed_seconds,
            "discarded_seconds": discarded_seconds,
            "batch": batch,
        }
        with self._pool.connection() as conn:
            row = conn.execute(Q["job_clean_finalized"], params).fetchone()
        return 0 if row is None else int(row[0])

    def leader_try_acquire(self) -> tuple[bool, int]:
        """Tries for the maintenance leadership: (held, generation of the leader connection)."""
        rows, generation = self._leader.execute(
            Q["leader_try_acquire"], {"lease_namespace": LEASE_NAMESPACE}
        )
        return bool(rows[0]["pg_try_advisory_lock"]), generation

    def leader_generation(self) -> int:
        """The leader connection's incarnation now, after a round trip proves it alive."""
        _, generation = self._leader.execute(Q["connection_ping"], {})
        return generation

    def notify_insert(self, queue: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(Q["notify_insert"], {"queue": queue})

    def payment_get(self, payment_id: UUID) -> Payment | None:
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["payment_get"], {"id": payment_id}).fetchone()
        return None if row is None else Payment(**row)

    def job_complete_with_intent(
        self, job: Job, intent: PaymentIntent
    ) -> tuple[bool, float | None]:
        """Stores the intent and completes the job together.

        Returns whether the job was still ours, and the payment's latency from
        insert to now when this call is what moved it to `pending`."""
        with self._pool.connection() as conn, conn.transaction():
            row = conn.execute(
                Q["payment_set_intent"],
                {
                    "id": intent.payment_id,
                    "provider_payment_id": intent.provider_payment_id,
                    "client_secret": intent.client_secret,
                },
            ).fetchone()
            ours = conn.execute(Q["job_set_completed_if_running"], {"id": job.id}).rowcount == 1
            return ours, None if row is None else float(row[0])

    def job_complete(self, job: Job) -> bool:
        with self._pool.connection() as conn:
            return conn.execute(Q["job_set_completed_if_running"], {"id": job.id}).rowcount == 1

    def job_retry(self, job: Job, error: dict[str, Any], delay_seconds: float) -> bool:
        params = {"id": job.id, "error": json.dumps(error), "delay_seconds": delay_seconds}
        with self._pool.connection() as conn:
            return conn.execute(Q["job_set_retryable_if_running"], params).rowcount == 1

    def job_discard(
        self, job: Job, error: dict[str, Any], failed_payments: Sequence[tuple[UUID, str]] = ()
    ) -> bool:
        """Discards the job and fails its payment in one transaction, so both or neither."""
        with self._pool.connection() as conn, conn.transaction():
            discarded = (
                conn.execute(
                    Q["job_set_discarded_if_running"], {"id": job.id, "error": json.dumps(error)}
                ).rowcount
                == 1
            )
            if discarded:
                for payment_id, message in failed_payments:
                    conn.execute(
                        Q["payment_set_failed"], {"id": payment_id, "error_message": message}
                    )
            return discarded
