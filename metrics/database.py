"""The exporter's one module that runs SQL (metrics/sql/exporter.sql)."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import psycopg

from common import sqlfiles

Q = sqlfiles.load("metrics.sql")
#: "Expiring" authorisations are those Stripe cancels within a day.
EXPIRING_WITHIN_SECONDS = 24 * 60 * 60.0


@dataclass(frozen=True)
class DatabaseSnapshot:
    jobs: list[tuple[str, str, str, int]]
    oldest_available: list[tuple[str, float]]
    payments: list[tuple[str, int]]
    events_unapplied: int = 0
    oldest_unapplied_event_age: float = 0.0
    payments_open: list[tuple[str, int]] = field(default_factory=list)
    authorizations_expiring: int = 0
    authorization_expiry_seconds: float = 0.0
    refunds_open: list[tuple[str, int]] = field(default_factory=list)


class DatabaseReader:
    """One connection, reused across scrapes and reopened after a failure."""

    def __init__(self, conninfo: str, statement_timeout_ms: int = 2000) -> None:
        self._conninfo = conninfo
        self._timeout_ms = statement_timeout_ms
        self._conn: psycopg.Connection[tuple[Any, ...]] | None = None
        self._lock = threading.Lock()

    def snapshot(self) -> DatabaseSnapshot:
        with self._lock:
            conn = self._connection()
            try:
                unapplied = conn.execute(Q["stripe_events_unapplied"]).fetchone()
                assert unapplied is not None
                expiring = conn.execute(
                    Q["authorizations_expiring"], {"within": EXPIRING_WITHIN_SECONDS}
                ).fetchone()
                assert expiring is not None
                return DatabaseSnapshot(
                    jobs=[(q, k, s, int(n)) for q, k, s, n in conn.execute(Q["jobs_unfinished"])],
                    oldest_available=[
                        (q, float(age)) for q, age in conn.execute(Q["job_oldest_available_age"])
                    ],
                    payments=[(s, int(n)) for s, n in conn.execute(Q["payments_recent_by_status"])],
                    events_unapplied=int(unapplied[0]),
                    oldest_unapplied_event_age=float(unapplied[1]),
                    payments_open=[
                        (s, int(n)) for s, n in conn.execute(Q["payments_open_by_status"])
                    ],
                    authorizations_expiring=int(expiring[0]),
                    authorization_expiry_seconds=float(expiring[1]),
                    refunds_open=[
                        (s, int(n)) for s, n in conn.execute(Q["refunds_open_by_status"])
                    ],
                )
            except psycopg.OperationalError:
                self._close()
                raise

    def ping(self) -> None:
        with self._lock:
            try:
                self._connection().execute(Q["ping"])
            except psycopg.OperationalError:
                self._close()
                raise

    def close(self) -> None:
        with self._lock:
            self._close()

    def _connection(self) -> psycopg.Connection[tuple[Any, ...]]:
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(
                self._conninfo,
                autocommit=True,
                connect_timeout=5,
                application_name="payment-worker metrics",
                options=f"-c statement_timeout={self._timeout_ms}",
            )
        return self._conn

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
