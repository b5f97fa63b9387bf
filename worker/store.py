"""The one module that runs SQL: every query of worker/sql/ is executed here."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg_pool import ConnectionPool

from common import schema
from worker.models import (
    Job,
    LifecycleJob,
    Observation,
    ObservedIntent,
    ObservedRefund,
    OperationJob,
    OperationResult,
    Payment,
    PaymentIntent,
    QueueSettings,
    RefundJob,
    RefundResult,
    RescuedJob,
)
from worker.queries import QUERIES as Q

# How long an election holds without renewal (Leadership renews every
# second): a leader that stops renewing, say behind a half-open connection its
# backend has not noticed, is replaced when it expires.
LEADER_TTL_SECONDS = 10.0

# Notice a dead peer within about 10 s instead of TCP's minutes: keepalive
# probes on an idle socket, and a bound on unacknowledged writes. A server that
# does not answer at all fails the connection attempt after connect_timeout.
# Every connection the worker opens uses these (the pool's too).
CONNECTION_PARAMS: dict[str, Any] = {
    "connect_timeout": 5,
    "keepalives": 1,
    "keepalives_idle": 5,
    "keepalives_interval": 2,
    "keepalives_count": 3,
    "tcp_user_timeout": 10_000,
}

# The same bounds on the server's side of the dedicated connections (see
# session_set_dead_client_detection), plus how often a backend running a
# statement checks that its client is still there (ms).
SERVER_DEAD_CLIENT_PARAMS: dict[str, str] = {
    "idle": "5",
    "interval": "2",
    "count": "3",
    "user_timeout": "10000",
    "check_interval": "2000",
}


@dataclass(frozen=True)
class BackfillPosition:
    """Where the backfill stands in Stripe's event list (payments.backfill_cursor).

    `covered_at`: when the last pass that read the list to its end began. `resume`:
    a pass cut by max_pages, as (created[gte], starting_after, when it began)."""

    covered_at: datetime | None
    resume: tuple[int, str, datetime] | None


def _connect(conninfo: str, application_name: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """A dedicated connection: its session is what holds something, so the
    server is told to end it soon after its worker is gone."""
    conn: psycopg.Connection[Any] = psycopg.connect(
        conninfo,
        autocommit=True,
        application_name=application_name,
        **CONNECTION_PARAMS,
        **kwargs,
    )
    try:
        conn.execute(Q["session_set_dead_client_detection"], SERVER_DEAD_CLIENT_PARAMS)
    except BaseException:
        conn.close()
        raise
    return conn


class DedicatedConnection:
    """A connection kept out of the pool because its session is what holds
    leases (or the leadership): when it dies, they die. Reconnects lazily."""

    def __init__(
        self, conninfo: str, application_name: str, *, synchronous_commit: bool = True
    ) -> None:
        self._conninfo = conninfo
        self._application_name = application_name
        self._synchronous_commit = synchronous_commit
        self._conn: psycopg.Connection[dict[str, Any]] | None = None
        self._lock = threading.Lock()

    def execute(
        self,
        query: Any,
        params: dict[str, Any],
        *,
        connect: bool = True,
        wait: float | None = None,
    ) -> list[dict[str, Any]]:
        """Runs one autocommit statement and returns its rows; with `connect`
        false, only on a session already open (else nothing runs). With `wait`,
        raises TimeoutError if another statement holds the session that long."""
        if not self._lock.acquire(timeout=-1 if wait is None else max(0.0, wait)):
            raise TimeoutError(f"{self._application_name}: a statement still runs")
        try:
            if self._conn is None or self._conn.closed:
                if not connect:
                    return []
                conn = _connect(self._conninfo, self._application_name, row_factory=dict_row)
                if not self._synchronous_commit:
                    try:
                        conn.execute(Q["session_asynchronous_commit"])
                    except BaseException:
                        conn.close()
                        raise
                self._conn = conn
            try:
                cur = self._conn.execute(query, params)
                return cur.fetchall() if cur.description else []
            except psycopg.OperationalError:
                self._close()
                raise
        finally:
            self._lock.release()

    def close(self, timeout: float | None = None) -> bool:
        """Ends the session. With `timeout`, gives up after that long if a
        statement still holds it (say, stuck on a lock) and returns False: the
        session then ends with the process, and what it holds with it."""
        if not self._lock.acquire(timeout=-1 if timeout is None else max(0.0, timeout)):
            return False
        try:
            self._close()
        finally:
            self._lock.release()
        return True

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
        conn = _connect(self._conninfo, "payment-worker listener")
        try:
            conn.execute(Q["listen_insert"])
        except BaseException:
            conn.close()
            raise
        self._conn = conn
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


class _Outcome:
    """One queued outcome statement and, once its transaction is over, its rows or error."""

    __slots__ = ("done", "error", "params", "query", "rows", "wake")

    def __init__(self, query: Any, params: dict[str, Any], wake: int | None) -> None:
        self.query = query
        self.params = params
        self.wake = wake
        self.rows: list[dict[str, Any]] | None = None  # None: not written
        self.error: BaseException | None = None
        self.done = False


class GroupCommit:
    """Writes outcomes from concurrent job threads together, in one transaction.

    The first thread to arrive writes its outcome and whatever queued meanwhile;
    outcomes that queue while it writes go in the next transaction, written by one
    of their own threads. So a lone outcome is one autocommit statement, as before,
    and concurrent ones share a commit and its WAL flush, with no timer. Every call
    returns only once its transaction is durable: pooled connections keep
    synchronous_commit. Each outcome is still fenced by its own function (attempt,
    lease); if one of a batch fails, the transaction is rolled back and each is
    written again alone, so one bad outcome never fails or loses the others."""

    def __init__(
        self,
        pool: ConnectionPool,
        max_batch: int = 64,
        written: Callable[[list[int]], None] | None = None,
    ) -> None:
        self._pool = pool
        self._written = written
        self._max_batch = max_batch
        self._cond = threading.Condition()
        self._queued: list[_Outcome] = []
        self._writing = False

    @property
    def queued(self) -> int:
        """Outcomes waiting for the transaction being written to end."""
        with self._cond:
            return len(self._queued)

    def execute(
        self, query: Any, params: dict[str, Any], wake: int | None = None
    ) -> list[dict[str, Any]]:
        """Runs one outcome statement, durably, and returns its rows (dict rows); then
        hands `wake` (a job id), with the batch's others, to `written`."""
        item = _Outcome(query, params, wake)
        with self._cond:
            self._queued.append(item)
            while not item.done:
                if not self._writing:
                    batch = self._queued[: self._max_batch]
                    del self._queued[: self._max_batch]
                    self._writing = True
                    break
                self._cond.wait()
            else:
                return _result(item)
        try:
            self._write(batch)
        finally:
            with self._cond:
                for written in batch:
                    written.done = True
                self._writing = False
                self._cond.notify_all()
        woken = [w.wake for w in batch if w.wake is not None]
        if self._written is not None and woken:
            # After the commit (and after the others were let go): whoever waits
            # for these jobs may read them now.
            self._written(woken)
        return _result(item)

    def _write(self, batch: list[_Outcome]) -> None:
        try:
            with self._pool.connection() as conn:
                if len(batch) == 1:
                    _run_alone(conn, batch[0])
                    return
                try:
                    _run_together(conn, batch)
                except psycopg.Error:
                    if conn.closed or conn.broken:
                        raise
                    # Rolled back, nothing of it written: each again, on its own.
                    for item in batch:
                        _run_alone(conn, item)
        except BaseException as exc:
            for item in batch:
                if item.rows is None and item.error is None:
                    item.error = exc
            if not isinstance(exc, Exception):
                raise


def _run_together(conn: psycopg.Connection[Any], batch: list[_Outcome]) -> None:
    cursors = []
    with contextlib.ExitStack() as stack:
        if psycopg.Pipeline.is_supported():
            stack.enter_context(conn.pipeline())
        with conn.transaction():
            for item in batch:
                cursors.append(conn.cursor(row_factory=dict_row).execute(item.query, item.params))
    for item, cur in zip(batch, cursors, strict=True):
        item.rows = cur.fetchall() if cur.description else []


def _run_alone(conn: psycopg.Connection[Any], item: _Outcome) -> None:
    try:
        cur = conn.cursor(row_factory=dict_row).execute(item.query, item.params)
        item.rows = cur.fetchall() if cur.description else []
    except psycopg.Error as exc:
        if conn.closed or conn.broken:
            raise
        item.error = exc


def _result(item: _Outcome) -> list[dict[str, Any]]:
    if item.error is not None:
        raise item.error
    assert item.rows is not None
    return item.rows


class SchemaNotDeployed(LookupError):
    """The database lacks the schema (or this version's part of it); the message says
    what to do."""


@contextlib.contextmanager
def _schema_needed() -> Iterator[None]:
    try:
        yield
    except psycopg.Error as exc:
        if schema.is_missing(exc):
            raise SchemaNotDeployed(schema.NOT_DEPLOYED) from None
        raise


class Store:
    """Queries against a connection pool, plus the two connections whose
    session is what holds something: job leases (claims happen there) and the
    leadership. Each public method is one transaction."""

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
        self.outcomes = GroupCommit(pool, written=self._wake)

    def close(self, timeout: float | None = None) -> bool:
        """Gives up the leadership, then closes the dedicated connections: every
        lease and the leadership end with their sessions anyway.

        With `timeout`, takes at most about that long in all, and returns False
        if a statement stuck on either connection kept it from closing."""
        deadline = None if timeout is None else time.monotonic() + timeout

        def left() -> float | None:
            return None if deadline is None else max(0.0, deadline - time.monotonic())

        # A failure needs no handling: the session is ending, and the next
        # election sees it gone.
        with contextlib.suppress(psycopg.Error, TimeoutError):
            self._leader.execute(Q["leader_resign"], {}, connect=False, wait=left())
        leases = self._leases.close(left())
        return self._leader.close(left()) and leases

    def _wake(self, job_ids: list[int]) -> None:
        """Gives up the jobs' wait locks (taken by the claim), waking their RPCs. A
        failure needs no handling: the lease session is gone, its locks with it."""
        with contextlib.suppress(psycopg.Error):
            self._leases.execute(Q["job_wake"], {"ids": job_ids}, connect=False)

    def _outcome(self, job: Job, query: Any, params: dict[str, Any]) -> dict[str, Any] | None:
        """A job's outcome, group-committed (GroupCommit): its first row, once durable."""
        rows = self.outcomes.execute(query, params, job.id if job.wait_locked else None)
        return rows[0] if rows else None

    def config_get(self) -> QueueSettings:
        """Raises SchemaNotDeployed on a database without the schema (the first query a
        worker runs)."""
        with _schema_needed(), self._pool.connection() as conn:
            row = conn.execute(Q["config_get"]).fetchone()
        if row is None:
            raise LookupError("payments.config has no row: is the schema deployed?")
        return QueueSettings(currency=row[0], queue=row[1])

    def job_get_available(self, max_to_lock: int, attempted_by: str) -> list[Job]:
        """Claims up to `max_to_lock` jobs of our queue (payments.config), leased
        on this store's lease connection, in River's order."""
        params = {"max_to_lock": max_to_lock, "attempted_by": attempted_by}
        rows = self._leases.execute(Q["job_get_available"], params)
        jobs = [Job(**row) for row in rows]
        return sorted(jobs, key=lambda j: (j.priority, j.scheduled_at, j.id))

    def job_schedule_due(self, max_jobs: int) -> int:
        with self._pool.connection() as conn:
            row = conn.execute(Q["job_schedule_due"], {"max": max_jobs}).fetchone()
        return 0 if row is None else int(row[0])

    def job_rescue_orphaned(
        self, stuck_after_seconds: float, max_jobs: int, error: str
    ) -> list[RescuedJob]:
        params = {"stuck_after_seconds": stuck_after_seconds, "max": max_jobs, "error": error}
        with self._pool.connection() as conn:
            rows = conn.cursor(row_factory=dict_row).execute(Q["job_rescue_orphaned"], params)
            return [RescuedJob(**row) for row in rows]

    def job_clean_finalized(
        self, completed_seconds: float, discarded_seconds: float, batch: int
    ) -> int:
        params = {
            "completed_seconds": completed_seconds,
            "discarded_seconds": discarded_seconds,
            "batch": batch,
        }
        with self._pool.connection() as conn:
            row = conn.execute(Q["job_clean_finalized"], params).fetchone()
        return 0 if row is None else int(row[0])

    def leader_elect(self, leader_id: str, ttl_seconds: float = LEADER_TTL_SECONDS) -> bool:
        """Takes or renews the maintenance leadership on the leader connection."""
        rows = self._leader.execute(
            Q["leader_elect"], {"leader_id": leader_id, "ttl_seconds": ttl_seconds}
        )
        return bool(rows[0]["elected"])

    def notify_insert(self, queue: str) -> None:
        with self._pool.connection() as conn:
            conn.execute(Q["notify_insert"], {"queue": queue})

    def job_payment_get(self, job: Job) -> Payment | None:
        """The job's payment, while this attempt holds the job; else None."""
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["job_payment_get"], _held(job)).fetchone()
        return None if row is None else Payment(**row)

    def job_complete_with_intent(
        self, job: Job, intent: PaymentIntent
    ) -> tuple[bool, float | None]:
        """Stores the intent on the job's payment and completes the job together.

        Returns whether the job was still ours, and the payment's latency from
        insert to now when this call is what moved it to `pending`."""
        params = {
            **_held(job),
            "provider_payment_id": intent.provider_payment_id,
            "client_secret": intent.client_secret,
        }
        row = self._outcome(job, Q["job_complete_with_intent"], params)
        if row is None:
            return False, None
        latency = row["latency_seconds"]
        return bool(row["completed"]), None if latency is None else float(latency)

    def job_complete(self, job: Job) -> bool:
        return _ours(self._outcome(job, Q["job_set_completed_if_running"], _held(job)))

    def job_retry(self, job: Job, error: dict[str, Any], delay_seconds: float) -> bool:
        params = {**_held(job), "error": json.dumps(error), "delay_seconds": delay_seconds}
        return _ours(self._outcome(job, Q["job_set_retryable_if_running"], params))

    def job_discard(self, job: Job, error: dict[str, Any]) -> bool:
        """Discards the job; the database applies its kind's given-up effect
        (payments.job_kind) in the same transaction."""
        params: dict[str, Any] = {**_held(job), "error": json.dumps(error)}
        return _ours(self._outcome(job, Q["job_set_discarded_if_running"], params))

    def job_kind_list(self) -> dict[str, str | None]:
        """The kinds the database knows, with their given-up effect functions."""
        with _schema_needed(), self._pool.connection() as conn:
            return {kind: given_up for kind, given_up in conn.execute(Q["job_kind_list"])}

    def queue_touch(self) -> bool:
        """Keeps our queue's metadata.river_queue row, as River's producers keep theirs;
        returns whether the queue is paused (claims find nothing then)."""
        with self._pool.connection() as conn:
            row = conn.execute(Q["queue_touch"]).fetchone()
        return row is not None and bool(row[0])

    # --- a payment's lifecycle (schema/deploy/payment_lifecycle.sql) ---------------------------

    def observation_token(self) -> datetime:
        """The database's clock_timestamp(), to be taken before a retrieve from Stripe."""
        with self._pool.connection() as conn:
            row = conn.execute(Q["observation_token"]).fetchone()
        assert row is not None
        token: datetime = row[0]
        return token

    def job_lifecycle_get(self, job: Job) -> LifecycleJob | None:
        """The job's payment (and event), while this attempt holds the job; else None."""
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["job_lifecycle_get"], _held(job)).fetchone()
        return None if row is None else LifecycleJob(**row)

    def job_payment_observe(self, job: Job, token: datetime, intent: ObservedIntent) -> Observation:
        """Writes the observation (if newer than the stored one and a move Stripe
        makes), marks the job's event and completes the job, together."""
        params = {**_held(job), "token": token, "intent": json.dumps(intent_json(intent))}
        row = self._outcome(job, Q["job_payment_observe"], params)
        assert row is not None
        return Observation(**row)

    def job_lifecycle_ignore(self, job: Job, reason: str) -> bool:
        """Completes the job, its event (if any) ignored for `reason`."""
        params = {**_held(job), "reason": reason}
        return _ours(self._outcome(job, Q["job_lifecycle_ignore"], params))

    def payment_reconcile_enqueue(self, after_seconds: float, max_jobs: int, rate: float) -> int:
        params = {"after_seconds": after_seconds, "max": max_jobs, "rate": rate}
        with self._pool.connection() as conn:
            row = conn.execute(Q["payment_reconcile_enqueue"], params).fetchone()
        return 0 if row is None else int(row[0])

    def stripe_event_newest_created(self) -> datetime | None:
        with self._pool.connection() as conn:
            row = conn.execute(Q["stripe_event_newest_created"]).fetchone()
        return None if row is None else row[0]

    def stripe_event_record(self, event: Mapping[str, Any], source: str) -> str:
        """stored, ignored (not ours) or duplicate."""
        params = {"event": json.dumps(event), "source": source}
        with self._pool.connection() as conn:
            row = conn.execute(Q["stripe_event_record"], params).fetchone()
        assert row is not None
        return str(row[0])

    # --- capture, cancel and refunds (schema/deploy/payment_operations.sql) -------------------

    def job_operation_get(self, job: Job) -> OperationJob | None:
        """The job's capture or cancel operation and its payment, while this attempt
        holds the job; else None."""
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["job_operation_get"], _held(job)).fetchone()
        return None if row is None else OperationJob(**row)

    def job_operation_check(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> OperationResult:
        """Writes the intent Stripe has now on the payment and lets the database decide
        whether the request may go to Stripe; a refusal fails it and completes the job.
        An outcome only when refused: the job's waiter is woken then, not when it goes on."""
        params = {**_held(job), "token": token, "intent": json.dumps(intent_json(intent))}
        rows = self.outcomes.execute(Q["job_operation_check"], params)
        if not rows:
            return OperationResult(False, None, None, None, None)
        checked = OperationResult(**rows[0])
        if checked.completed and job.wait_locked:
            self._wake([job.id])
        return checked

    def job_operation_finish(
        self, job: Job, token: datetime, intent: ObservedIntent
    ) -> OperationResult:
        """Writes the intent on the payment, decides the operation, completes the job."""
        params = {**_held(job), "token": token, "intent": json.dumps(intent_json(intent))}
        row = self._outcome(job, Q["job_operation_finish"], params)
        if row is None:
            return OperationResult(False, None, None, None, None)
        return OperationResult(**row)

    def job_refund_get(self, job: Job) -> RefundJob | None:
        """The job's refund and its payment's intent, while this attempt holds the job."""
        with self._pool.connection() as conn:
            cur = conn.cursor(row_factory=dict_row)
            row = cur.execute(Q["job_refund_get"], _held(job)).fetchone()
        return None if row is None else RefundJob(**row)

    def job_refund_finish(self, job: Job, token: datetime, refund: ObservedRefund) -> RefundResult:
        """Stores Stripe's refund on our row and completes the job."""
        params = {**_held(job), "token": token, "refund": json.dumps(refund_json(refund))}
        row = self._outcome(job, Q["job_refund_finish"], params)
        if row is None:
            return RefundResult(False, None, None)
        return RefundResult(**row)

    # --- the backfill's position (schema/deploy/backfill_cursor.sql) ----------------------------

    def backfill_position(self) -> BackfillPosition | None:
        """The saved position; None when no pass has been saved yet."""
        with self._pool.connection() as conn:
            row = conn.cursor(row_factory=dict_row).execute(Q["backfill_position"]).fetchone()
        if row is None:
            return None
        resume = None
        if row["resume_starting_after"] is not None:
            resume = (
                int(row["resume_created_gte"]),
                str(row["resume_starting_after"]),
                row["resume_started_at"],
            )
        return BackfillPosition(covered_at=row["covered_at"], resume=resume)

    def backfill_pass_complete(self, started_at: datetime) -> bool:
        """A pass that began at `started_at` read the list to its end; returns whether
        the covered time moved (never back). On the leader connection: the database
        refuses it from any session but the leader's."""
        rows = self._leader.execute(Q["backfill_pass_complete"], {"started_at": started_at})
        return bool(rows[0]["moved"])

    def backfill_pass_cut(
        self, created_gte: int, starting_after: str, started_at: datetime
    ) -> bool:
        """A pass was cut after the event `starting_after`: the next continues there.
        Returns whether it was saved (not for a pass begun before the covered time).
        On the leader connection, like backfill_pass_complete."""
        params = {
            "created_gte": created_gte,
            "starting_after": starting_after,
            "started_at": started_at,
        }
        rows = self._leader.execute(Q["backfill_pass_cut"], params)
        return bool(rows[0]["saved"])


def intent_json(intent: ObservedIntent) -> dict[str, Any]:
    """An observed intent as the schema's functions read it (p_intent): `refunds` is
    absent when they were not looked at, else the list of them."""
    observed = asdict(intent)
    del observed["request_id"], observed["refunds"]
    if intent.refunds is not None:
        observed["refunds"] = [refund_json(r) for r in intent.refunds]
    return observed


def refund_json(refund: ObservedRefund) -> dict[str, Any]:
    """A refund as the schema reads it: {id, status, amount, currency, reason,
    failure_reason, metadata_refund_id, payment_intent}."""
    shaped = asdict(refund)
    shaped.pop("request_id")
    return shaped


def _held(job: Job) -> dict[str, Any]:
    """What proves the caller holds the job: its id, attempt and lease token."""
    return {"id": job.id, "attempt": job.attempt, "lease": job.lease_token}


def _ours(row: dict[str, Any] | None) -> bool:
    return row is not None and bool(row["ours"])
