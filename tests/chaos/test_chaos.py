"""Fault injection against the whole system: the real supervisord.conf running 4 workers,
a private PostgreSQL that is crashed and restarted mid-run, workers SIGKILLed every second,
and a Stripe stand-in that fails, rate-limits, drops and loses answers. Every payment must
still get exactly one PaymentIntent.

Clocks: kill and restart times are taken with time.time() here, job times are PostgreSQL's
now() on the same machine, so they compare directly.
"""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import threading
import time
import xmlrpc.client
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from queue import Empty, SimpleQueue
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict
from psycopg.rows import dict_row

from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import (
    Supervisord,
    rpc,
    session_roles,
    wait_until,
    worker_stopwaitsecs,
)
from tests.chaos.accounting import (
    Entry,
    backoff_outside_river,
    overlaps,
    replays_without_origin,
    tallies,
)
from tests.chaos.cluster import PrivateCluster
from tests.chaos.conftest import Record, StartSupervisord
from worker.handlers import MAX_KEYS_PER_ATTEMPT
from worker.maintenance import RESCUE_ERROR

API_KEY = "sk_test_chaos_4Vn8Qe2Lx"
WORKERS = 4
SEED = 20261127

# The stand-in's faults: 25 % of API attempts fail one way or another. A 5xx of a create
# that began executing is saved against its key (Stripe's rule, the stand-in's default);
# create_then_5xx makes the intent first, so only a search finds it.
FAULTS = {
    "fail_5xx": 0.08,
    "create_then_5xx": 0.02,
    "fail_429": 0.05,
    "drop": 0.05,
    "lose_response": 0.05,
}
NO_FAULTS = dict.fromkeys(FAULTS, 0.0)
LATENCY_MS = 100

BATCHES = 40  # one batch a second: the chaos phase lasts about 40 s
BATCH_SIZE = 13
RESTART_BATCH = 10  # inserted just before the crash, so jobs are in flight when it lands
RESTART_AFTER = 18.0  # seconds into the chaos phase
KILL_INTERVAL = 1.0

# A liveness bound, not a speed target (make bench measures speed): a killed worker's
# jobs are running again within it even on a loaded machine (seen: 12 s under load 5).
MAX_KILL_TO_RESCUE = 20.0
# Liveness bounds too: seen 1 to 2.4 s (the summary line prints them), and 7.6 s
# with the machine under load, where a 5 s bound failed.
MAX_RESTART_TO_RESUME = 30.0
MAX_BACKLOG_SECONDS = 30.0
DRAIN_DEADLINE = 150.0
NETWORK_RETRIES = 2  # the workers' STRIPE_NETWORK_RETRIES default

UNFINISHED_STATES = ("available", "running", "retryable", "scheduled", "pending")

INSERT = "INSERT INTO payments.transactions (amount, currency, description) VALUES (%s, 'USD', %s)"


# --- payments ----------------------------------------------------------------------------


def insert_payments(url: str, tag: str, count: int, amount: int, timeout: float = 60) -> None:
    """Inserts `count` payments in one transaction (the trigger enqueues their jobs),
    retrying through a database restart. A batch whose COMMIT was cut off may have landed:
    its first description tells, so a retry never inserts it twice."""
    rows = [(amount + j, f"chaos {tag} #{j:02d}") for j in range(count)]
    deadline = time.monotonic() + timeout
    while True:
        try:
            with psycopg.connect(url, autocommit=True, connect_timeout=2) as conn:
                landed = conn.execute(
                    "SELECT EXISTS (SELECT 1 FROM payments.transactions WHERE description = %s)",
                    (rows[0][1],),
                ).fetchone()
                if landed and landed[0]:
                    return
                with conn.transaction():
                    conn.cursor().executemany(INSERT, rows)
            return
        except psycopg.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def query(url: str, sql: str, params: Any = None) -> list[dict[str, Any]]:
    with psycopg.connect(url, autocommit=True, connect_timeout=2, row_factory=dict_row) as conn:
        return conn.execute(sql, params).fetchall()


# --- kills and what they orphaned ---------------------------------------------------------


@dataclass
class Orphan:
    """A job that was `running` under a worker just before that worker was SIGKILLed."""

    job_id: int
    attempt: int
    killed_at: float
    worker: str
    outcome: str | None = None  # reclaimed, finished, finished_before_kill, not_orphaned
    seconds: float | None = None  # kill -> claimed again (or finished)

    def settle(self, row: dict[str, Any], observed_at: float) -> bool:
        """Classifies the job from its current row; False while it still waits for a rescue."""
        own = [e for e in row["errors"] or [] if int(e.get("attempt", -1)) == self.attempt]
        rescued = any(e.get("error") == RESCUE_ERROR for e in own)
        if own and not rescued:
            # Its worker recorded this attempt's failure before it died: not orphaned.
            self.outcome = "not_orphaned"
            return True
        if row["attempt"] > self.attempt:
            # attempted_at is the next claim's, unless a later claim overwrote it between two
            # polls: then the moment we saw it is an upper bound.
            claimed = (
                row["attempted_at"].timestamp()
                if row["attempt"] == self.attempt + 1
                else observed_at
            )
            earlier = [e for e in row["errors"] or [] if int(e.get("attempt", -1)) < self.attempt]
            if rescued and earlier:
                # Not the job's first error: the rescue waits River's backoff for its errors so
                # far (16 s and up) on purpose, so only the kill -> rescue part is bounded.
                (rescue,) = [e for e in own if e.get("error") == RESCUE_ERROR]
                claimed = datetime.fromisoformat(rescue["at"]).timestamp()
            self.outcome, self.seconds = "reclaimed", claimed - self.killed_at
            return True
        if row["state"] in ("completed", "discarded"):
            finalized = row["finalized_at"].timestamp()
            if finalized < self.killed_at and not rescued:
                self.outcome = "finished_before_kill"
            else:
                self.outcome, self.seconds = "finished", finalized - self.killed_at
            return True
        return False


@dataclass
class Chaos:
    url: str
    stop_kills: threading.Event = field(default_factory=threading.Event)
    stop_monitor: threading.Event = field(default_factory=threading.Event)
    kills: list[tuple[float, str, int]] = field(default_factory=list)
    unmeasured_kills: int = 0
    unmeasured_kill_times: list[float] = field(default_factory=list)
    orphans: list[Orphan] = field(default_factory=list)
    new_orphans: SimpleQueue[Orphan] = field(default_factory=SimpleQueue)
    errors: list[str] = field(default_factory=list)

    def thread(self, target: Callable[[], None], name: str) -> threading.Thread:
        def run() -> None:
            try:
                target()
            except Exception as exc:  # surfaced by the test, with the thread's name
                self.errors.append(f"{name}: {type(exc).__name__}: {exc}")

        thread = threading.Thread(target=run, name=name, daemon=True)
        thread.start()
        return thread

    def insert_all(self) -> None:
        start = time.monotonic()
        for batch in range(BATCHES):
            delay = start + batch - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            insert_payments(self.url, f"b{batch:02d}", BATCH_SIZE, 1000 + 100 * batch)

    def kill_every_second(self) -> None:
        """SIGKILLs a random RUNNING worker each second; supervisord restarts it."""
        rng = random.Random(SEED)
        host = socket.gethostname()
        start = time.monotonic()
        tick = 0
        while True:
            tick += 1
            if self.stop_kills.wait(max(0.0, start + tick * KILL_INTERVAL - time.monotonic())):
                return
            try:
                infos = rpc("getAllProcessInfo")
            except (OSError, xmlrpc.client.Fault):
                continue
            running = sorted(
                (p for p in infos if p["group"] == "worker" and p["statename"] == "RUNNING"),
                key=lambda p: str(p["name"]),
            )
            if not running:
                continue
            victim = rng.choice(running)
            worker_id = f"{host}:{victim['name']}:{victim['pid']}"
            try:
                jobs = query(
                    self.url,
                    "SELECT id, attempt FROM metadata.river_job WHERE state = 'running'"
                    " AND attempted_by[cardinality(attempted_by)] = %s",
                    (worker_id,),
                )
            except psycopg.OperationalError:
                jobs = None  # the database is down (the restart): kill all the same
            killed_at = time.time()
            try:
                os.kill(victim["pid"], signal.SIGKILL)
            except ProcessLookupError:
                continue
            self.kills.append((killed_at, str(victim["name"]), int(victim["pid"])))
            if jobs is None:
                self.unmeasured_kills += 1
                self.unmeasured_kill_times.append(killed_at)
                continue
            for job in jobs:
                self.new_orphans.put(Orphan(job["id"], job["attempt"], killed_at, worker_id))

    def monitor(self) -> None:
        """Every 0.1 s, settles the orphans whose job was claimed again or finished."""
        pending: list[Orphan] = []
        while True:
            stopping = self.stop_monitor.is_set()
            while True:
                try:
                    orphan = self.new_orphans.get_nowait()
                except Empty:
                    break
                self.orphans.append(orphan)
                pending.append(orphan)
            if pending:
                try:
                    rows = query(
                        self.url,
                        "SELECT id, state::text AS state, attempt, attempted_at, finalized_at,"
                        " errors FROM metadata.river_job WHERE id = ANY(%s)",
                        ([o.job_id for o in pending],),
                    )
                except psycopg.OperationalError:
                    rows = []
                observed_at = time.time()
                by_id = {row["id"]: row for row in rows}
                pending = [
                    o
                    for o in pending
                    if o.job_id not in by_id or not o.settle(by_id[o.job_id], observed_at)
                ]
            if stopping:
                return
            self.stop_monitor.wait(0.1)


# --- reading the outcome ------------------------------------------------------------------


def killed_between(
    chaos: Chaos, job_of_payment: dict[str, dict[str, Any]]
) -> Callable[[Entry, Entry], bool]:
    """Whether an overlap is a killed worker's request finishing at the stand-in while the
    rescued job runs again: the job was orphaned by a kill between the two starts (or a
    worker was killed then while the database was down, so its jobs are unknown)."""
    kills_of: dict[int, list[float]] = {}
    for orphan in chaos.orphans:
        kills_of.setdefault(orphan.job_id, []).append(orphan.killed_at)

    def excused(earlier: Entry, later: Entry) -> bool:
        job = job_of_payment.get(earlier["payment_id"])
        times = [*chaos.unmeasured_kill_times, *(kills_of.get(job["id"], []) if job else [])]
        return any(earlier["started"] <= t <= later["started"] for t in times)

    return excused


def job_story(sup: Supervisord, job_id: int, limit: int = 20) -> str:
    """The workers' log lines about one job."""
    lines = [
        {k: line.get(k) for k in ("ts", "process_name", "msg", "attempt", "error") if k in line}
        for line in sup.json_lines()
        if line.get("job_id") == job_id
    ]
    return "\n".join(json.dumps(line) for line in lines[-limit:])


def unfinished(url: str) -> dict[str, int]:
    rows = query(
        url,
        "SELECT state::text AS state, count(*) AS n FROM metadata.river_job"
        " WHERE state::text = ANY(%s) GROUP BY 1",
        (list(UNFINISHED_STATES),),
    )
    return {row["state"]: row["n"] for row in rows}


ERROR_KINDS = {
    RESCUE_ERROR: "killed",
    "Unexpected error communicating with Stripe": "conn",
    "Sorry, something went wrong": "5xx",
    "Request rate limit exceeded": "429",
}


def attempt_story(errors: list[dict[str, Any]] | None) -> str:
    """A job's failed attempts in a few words: `1:5xx,2:killed,3:conn,4:429`."""
    kinds = []
    for error in errors or []:
        text = str(error.get("error", ""))
        kind = next((k for prefix, k in ERROR_KINDS.items() if text.startswith(prefix)), text[:30])
        kinds.append(f"{error.get('attempt')}:{kind}")
    return ",".join(kinds)


@pytest.mark.chaos
@pytest.mark.timeout(330)
def test_payments_made_exactly_once_through_kills_a_crash_and_stripe_faults(
    pg_cluster: PrivateCluster,
    chaos_db: str,
    worker_url: str,
    start_supervisord: StartSupervisord,
    record_summary: Record,
) -> None:
    url = chaos_db
    with StandinProcess(latency_ms=LATENCY_MS, seed=SEED, quiet=True, **FAULTS) as standin:
        sup = start_supervisord(
            {
                "DATABASE_URL": worker_url,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": standin.url,
                "RIVER_WORKER_COUNT": str(WORKERS),
            }
        )
        sup.wait_workers_running(WORKERS)
        roles = session_roles(url)
        assert roles, "no worker session in pg_stat_activity"
        login = conninfo_to_dict(worker_url)["user"]
        assert {user for users in roles.values() for user in users} == {login}

        chaos = Chaos(url)
        try:
            started = time.monotonic()
            wall_start = time.time()
            inserter = chaos.thread(chaos.insert_all, "inserter")
            killer = chaos.thread(chaos.kill_every_second, "killer")
            monitor = chaos.thread(chaos.monitor, "monitor")

            # The crash: right after a batch commits, so its jobs are claimed and waiting on
            # Stripe when the server goes down - their outcomes and leases die with it.
            time.sleep(max(0.0, started + RESTART_AFTER - time.monotonic()))
            insert_payments(url, "restart", RESTART_BATCH, 500)
            crashed_at = time.time()
            accepted_at = pg_cluster.restart("immediate")
            waiting = unfinished(url)  # the rescuer cannot have run yet

            inserter.join(timeout=BATCHES * 3)
            chaos.stop_kills.set()
            killer.join(timeout=30)
            chaos_seconds = time.monotonic() - started

            # Faults stop with the chaos phase. Each attempt fails with p = 0.25 while they are
            # on, so 1 job in 256 fails 4 times and waits 256 s for its 5th attempt, and 1 in
            # 1024 is discarded after 5 (max_attempts): with 500+ payments most runs would hit
            # one. Every job has had its first attempts under faults by now; the late retries
            # (16 s, 81 s) show that backed-off jobs come back and finish exactly once.
            standin.admin.configure(**NO_FAULTS)
            drain_deadline = time.monotonic() + DRAIN_DEADLINE
            fast_forwarded: list[dict[str, Any]] = []
            while True:
                left = unfinished(url)
                if not left:
                    break
                remaining = drain_deadline - time.monotonic()
                if remaining <= 0:
                    break
                # A retry due after the deadline (only a job whose 4th attempt failed: 256 s)
                # is brought forward and reported, never silently waited out or dropped.
                fast_forwarded += query(
                    url,
                    "WITH late AS (SELECT id, scheduled_at FROM metadata.river_job"
                    " WHERE state = 'retryable'"
                    " AND scheduled_at > now() + make_interval(secs => %s) FOR UPDATE)"
                    " UPDATE metadata.river_job j SET scheduled_at = now() FROM late"
                    " WHERE j.id = late.id"
                    " RETURNING j.id, j.attempt, late.scheduled_at AS was_scheduled_at, j.errors",
                    (max(remaining - 10, 0),),
                )
                time.sleep(0.5)
            wall = time.time() - wall_start

            chaos.stop_monitor.set()
            monitor.join(timeout=10)
        finally:
            # Whatever failed above, no thread may go on killing workers or polling.
            chaos.stop_kills.set()
            chaos.stop_monitor.set()
        status = sup.stop()

        payments = query(
            url,
            "SELECT id::text AS id, status, error_message, provider_payment_id"
            " FROM payments.transactions",
        )
        jobs = query(
            url,
            "SELECT id, state::text AS state, attempt, args->>'payment_id' AS payment_id,"
            " errors, finalized_at FROM metadata.river_job",
        )
        resumed = query(
            url,
            "SELECT min(finalized_at) AS first FROM metadata.river_job"
            " WHERE finalized_at > to_timestamp(%s)",
            (accepted_at,),
        )[0]["first"]
        intents = standin.admin.payment_intents()
        faults = {k: v for k, v in standin.admin.stats()["faults"].items() if k in FAULTS}
        requests = standin.admin.requests()

    measured = [o for o in chaos.orphans if o.seconds is not None]
    max_rescue = max((o.seconds for o in measured if o.seconds is not None), default=0.0)
    resume = None if resumed is None else resumed.timestamp() - accepted_at
    outcomes = Counter(o.outcome or "unsettled" for o in chaos.orphans)
    if chaos.unmeasured_kills:
        outcomes["kills_while_db_down"] = chaos.unmeasured_kills
    errors_of = {j["id"]: j["errors"] for j in jobs}
    forwarded = [f"{j['id']}({attempt_story(errors_of.get(j['id']))})" for j in fast_forwarded]
    tally = tallies(requests)
    job_of_payment = {j["payment_id"]: j for j in jobs}
    concurrent, after_kill = overlaps(requests, killed_between(chaos, job_of_payment))
    create_requests = sum(t.creates for t in tally.values())
    replays = sum(t.replays for t in tally.values())
    searches = sum(t.searches for t in tally.values())
    record_summary(
        f"chaos: payments={len(payments)} kills={len(chaos.kills)} faults={faults} "
        f"restarts={pg_cluster.restarts} max_kill_to_rescue={max_rescue:.1f}s "
        f"restart_to_resume={'never' if resume is None else f'{resume:.1f}s'} "
        f"wall={wall:.0f}s | orphans={dict(outcomes)} waiting_at_restart={waiting} "
        f"down={accepted_at - crashed_at:.2f}s chaos_phase={chaos_seconds:.0f}s "
        f"fast_forwarded={forwarded} create_requests={create_requests} replays={replays} "
        f"searches={searches} concurrent={len(concurrent)} overlaps_after_kill={after_kill} "
        f"log={sup.log_path}"
    )

    assert not chaos.errors, chaos.errors
    assert status == 0, f"supervisord exited {status}"
    assert sup.stop_seconds is not None and sup.stop_seconds <= worker_stopwaitsecs()
    assert len(payments) == BATCHES * BATCH_SIZE + RESTART_BATCH >= 500

    left = [j for j in jobs if j["state"] in UNFINISHED_STATES]
    assert not left, "jobs still unfinished after the drain deadline:\n" + "\n".join(
        f"{j['id']} {j['state']} attempt {j['attempt']}: {j['errors']}\n{job_story(sup, j['id'])}"
        for j in left[:10]
    )
    discarded = [j for j in jobs if j["state"] == "discarded"]
    assert not discarded, "jobs discarded:\n" + "\n".join(
        f"{j['id']} attempt {j['attempt']}: {j['errors']}\n{job_story(sup, j['id'])}"
        for j in discarded[:10]
    )
    assert Counter(j["state"] for j in jobs) == {"completed": len(payments)}
    assert Counter(j["payment_id"] for j in jobs) == Counter(p["id"] for p in payments)

    not_pending = [p for p in payments if p["status"] != "pending"]
    assert not not_pending, f"payments not pending: {not_pending[:10]}"
    per_payment = Counter(e["payment_intent"]["metadata"].get("payment_id") for e in intents)
    doubled = {pid: n for pid, n in per_payment.items() if n != 1}
    assert not doubled, f"payments with more than one PaymentIntent: {doubled}"
    strays = set(per_payment) - {p["id"] for p in payments}
    assert not strays, f"PaymentIntents without a payment: {strays}"
    assert set(per_payment) == {p["id"] for p in payments}
    intent_of = {
        e["payment_intent"]["metadata"]["payment_id"]: e["payment_intent"]["id"] for e in intents
    }
    assert all(p["provider_payment_id"] == intent_of[p["id"]] for p in payments)

    # The stand-in's side of exactly once: per payment, one request made its intent; every
    # replay answered a key an earlier request executed under; no more creates than its
    # attempts allow; never two requests of one payment at once, except a killed worker's
    # last one finishing while the rescued job starts again.
    made_twice = {pid: t.made for pid, t in tally.items() if t.made != 1}
    assert not made_twice, f"payments whose intent was made by != 1 request: {made_twice}"
    assert set(tally) == {p["id"] for p in payments}
    assert not replays_without_origin(requests)
    too_many = {
        pid: (t.creates, job_of_payment[pid]["attempt"])
        for pid, t in tally.items()
        if t.creates > job_of_payment[pid]["attempt"] * (1 + NETWORK_RETRIES) * MAX_KEYS_PER_ATTEMPT
    }
    assert not too_many, f"more create requests than (attempts x retries x keys): {too_many}"
    assert not concurrent, "two requests of one payment at once:\n" + "\n".join(
        f"{a}\n{b}" for a, b in concurrent[:5]
    )
    wrong_backoff = backoff_outside_river(fast_forwarded)
    assert not wrong_backoff, "retries scheduled outside River's backoff:\n" + "\n".join(
        wrong_backoff
    )

    unsettled = [o for o in chaos.orphans if o.outcome is None]
    assert not unsettled, f"killed workers' jobs never claimed again: {unsettled}"
    slow = [o for o in measured if o.seconds is not None and o.seconds > MAX_KILL_TO_RESCUE]
    assert not slow, f"rescues slower than {MAX_KILL_TO_RESCUE:.0f} s:\n" + "\n".join(
        f"{o}\n{job_story(sup, o.job_id)}" for o in slow
    )
    assert waiting.get("available", 0) + waiting.get("running", 0) > 0, (
        "no job was waiting when the server came back: restart_to_resume measures nothing"
    )
    assert resume is not None, "no job completed after the restart"
    assert resume <= MAX_RESTART_TO_RESUME, (
        f"first job completed {resume:.1f} s after the server accepted connections again"
    )


@pytest.mark.chaos
@pytest.mark.timeout(150)
def test_backlog_inserted_while_every_worker_is_down_is_processed_on_their_return(
    chaos_db: str, worker_url: str, start_supervisord: StartSupervisord, record_summary: Record
) -> None:
    url = chaos_db
    with StandinProcess(latency_ms=LATENCY_MS, seed=SEED, quiet=True) as standin:
        sup = start_supervisord(
            {
                "DATABASE_URL": worker_url,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": standin.url,
                "RIVER_WORKER_COUNT": str(WORKERS),
            }
        )
        running = sup.wait_workers_running(WORKERS)
        rpc("stopProcessGroup", "worker")
        assert not sup.workers("RUNNING")

        insert_payments(url, "backlog", 50, 2000)
        returned_at = time.time()
        for name in sorted(running):
            rpc("startProcess", f"worker:{name}", False)

        def all_pending() -> bool:
            rows = query(
                url, "SELECT count(*) AS n FROM payments.transactions WHERE status = 'pending'"
            )
            return bool(rows[0]["n"] == 50)

        wait_until(
            all_pending, 60, lambda: f"the backlog was not processed:\n{sup.output()[-4000:]}"
        )
        seconds = time.time() - returned_at
        intents = standin.admin.payment_intents()

    record_summary(f"chaos: backlog=50 workers_down_to_all_pending={seconds:.1f}s")
    assert len(intents) == 50
    assert len({e["payment_intent"]["metadata"]["payment_id"] for e in intents}) == 50
    assert seconds <= MAX_BACKLOG_SECONDS, f"the backlog took {seconds:.1f} s"
