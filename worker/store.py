"""The one module that runs SQL: every query of worker/sql/ is executed here."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any
from uuid import UUID

from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from worker.models import Job, Payment, PaymentIntent, QueueSettings
from worker.queries import QUERIES as Q


class Store:
    """Queries against a connection pool; each public method is one transaction."""

    def __init__(self, pool: ConnectionPool) -> None:
        self._pool = pool

    def config_get(self) -> QueueSettings:
        with self._pool.connection() as conn:
            row = conn.execute(Q["config_get"]).fetchone()
        if row is None:
            raise LookupError("payments.config has no row: is the schema deployed?")
        return QueueSettings(currency=row[0], queue=row[1])

    def job_get_available(self, queue: str, max_to_lock: int, attempted_by: str) -> list[Job]:
        params = {"queue": queue, "max_to_lock": max_to_lock, "attempted_by": attempted_by}
        with self._pool.connection() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(Q["job_get_available"], params)
            jobs = [Job(**row) for row in rows]
        return sorted(jobs, key=lambda j: (j.priority, j.scheduled_at, j.id))

    def job_schedule_due(self, queue: str, max_jobs: int) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(Q["job_schedule_due"], {"queue": queue, "max": max_jobs}).fetchone()
        return 0 if row is None else int(row[0])

    def payment_get(self, payment_id: UUID) -> Payment | None:
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["payment_get"], {"id": payment_id}).fetchone()
        return None if row is None else Payment(**row)

    def job_complete_with_intent(self, job: Job, intent: PaymentIntent) -> bool:
        """Stores the intent and completes the job together; False if the job was no longer ours."""
        with self._pool.connection() as conn, conn.transaction():
            conn.execute(
                Q["payment_set_intent"],
                {
                    "id": intent.payment_id,
                    "provider_payment_id": intent.provider_payment_id,
                    "client_secret": intent.client_secret,
                },
            )
            return conn.execute(Q["job_set_completed_if_running"], {"id": job.id}).rowcount == 1

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
