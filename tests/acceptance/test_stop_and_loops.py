"""A worker process under the repo's supervisord.conf when its stop meets something slow or
stuck, and when one of its loops breaks or hangs: real supervisord, signals, psql, the
exporter's /healthz, the stand-in's latency."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import (
    StartSupervisord,
    Supervisord,
    payment_sql,
    psql,
    psql_ok,
    wait_until,
    worker_stopwaitsecs,
)
from tests.acceptance.test_metrics import Exporter
from worker import service

pytestmark = pytest.mark.acceptance

HEARTBEAT_MAX_AGE = 3  # METRICS_HEARTBEAT_MAX_AGE given to the exporter


@pytest.fixture
def one_worker(
    start_supervisord: StartSupervisord, worker_env: dict[str, str]
) -> Iterator[tuple[Supervisord, Exporter]]:
    env = {
        **worker_env,
        "RIVER_WORKER_COUNT": "1",
        "METRICS_HEARTBEAT_MAX_AGE": str(HEARTBEAT_MAX_AGE),
    }
    sup = start_supervisord(env)
    sup.wait_workers_running(1)
    exporter = Exporter(int(env["METRICS_PORT"]))
    exporter.wait_healthy(sup)
    yield sup, exporter


def worker_lines(sup: Supervisord, pid: int) -> list[dict[str, Any]]:
    return [line for line in sup.json_lines() if line["pid"] == pid]


def stop_worker(sup: Supervisord) -> tuple[float, str]:
    """`supervisorctl stop worker:worker-00` (SIGTERM, SIGKILL after stopwaitsecs); the
    seconds it took and supervisord's line about the stop."""
    started = time.monotonic()
    done = sup.ctl("stop", "worker:worker-00")
    took = time.monotonic() - started
    assert done.returncode == 0, done.stdout + done.stderr
    [line] = [line for line in sup.supervisord_lines() if "stopped: worker" in line]
    assert not [line for line in sup.supervisord_lines() if "SIGKILL" in line], sup.output()
    return took, line


def one_value(url: str, query: str) -> str:
    return psql_ok(url, query)


@pytest.mark.timeout(120)
def test_sigterm_during_a_slow_stripe_call_exits_within_the_bound_and_the_job_runs_once(
    one_worker: tuple[Supervisord, Exporter], db_url: str, standin: StandinProcess
) -> None:
    sup, _ = one_worker
    pid = sup.workers("RUNNING")["worker-00"]["pid"]
    # Slower than the jobs' limit: the answer comes only after the worker has gone.
    latency_s = service.STOP_JOBS_SECONDS + 4
    standin.admin.configure(latency_ms=int(latency_s * 1000))
    rpc = psql(db_url, f"SET payments.sync_timeout = '1 s'; {payment_sql(2500, 'slow')}")
    assert "has no PaymentIntent yet" in rpc.stderr, rpc.stderr
    wait_until(lambda: standin.admin.stats()["requests"]["total"] == 1, 10, "no Stripe request")
    standin.admin.configure(latency_ms=0)  # the request in flight keeps its latency

    took, stopped = stop_worker(sup)
    assert took < service.STOP_BOUND_SECONDS < worker_stopwaitsecs(), f"took {took:.1f} s"
    assert took >= service.STOP_JOBS_SECONDS - 1  # the job had its time to finish
    assert re.search(r"stopped: (worker:)?worker-00 \(exit status 1\)", stopped), stopped
    mine = worker_lines(sup, pid)
    msgs = [line["msg"] for line in mine]
    assert "stopping: finishing the jobs in hand" in msgs
    [limit] = [line for line in mine if line["msg"].startswith("stop time limit reached")]
    assert (limit["in_flight"], limit["stuck_loops"]) == (1, [])
    assert msgs[-1] == "worker stopped"
    # faulthandler's dump of every thread, the job's among them (in the Stripe call).
    output = sup.output()
    assert "Thread 0x" in output and "create_payment_intent" in output
    job = json.loads(one_value(db_url, "SELECT row_to_json(j) FROM metadata.river_job AS j"))
    assert job["state"] == "running"  # its lease ended with the process's session

    # The stand-in finishes the slow request (it creates the intent, answering no one);
    # then a worker starts again, rescues the job, and Stripe replays the intent.
    wait_until(
        lambda: standin.admin.stats()["payment_intents_created"] == 1, latency_s + 5, "create"
    )
    assert sup.ctl("start", "worker:worker-00").returncode == 0
    wait_until(
        lambda: one_value(db_url, "SELECT status FROM payments.transactions") == "pending",
        20,
        lambda: f"the payment was not completed after the rescue:\n{sup.output()[-3000:]}",
    )
    assert one_value(db_url, "SELECT state FROM metadata.river_job") == "completed"
    stats = standin.admin.stats()
    assert (stats["payment_intents_created"], stats["idempotent_replays"]) == (1, 1)
    assert len(standin.admin.payment_intents()) == 1


def test_a_stuck_loop_turns_healthz_503_naming_it_and_the_stop_does_not_wait_for_it(
    one_worker: tuple[Supervisord, Exporter], db_url: str
) -> None:
    sup, exporter = one_worker
    pid = sup.workers("RUNNING")["worker-00"]["pid"]
    with psycopg.connect(db_url) as blocker:
        # Every election, the leader's renewal too, now waits on this lock.
        blocker.execute("LOCK TABLE payments.worker_leader IN ACCESS EXCLUSIVE MODE")

        def unhealthy() -> dict[str, Any] | None:
            status, report = exporter.health()
            return report if status == 503 else None

        report = wait_until(
            unhealthy, HEARTBEAT_MAX_AGE + 10, lambda: f"/healthz stayed 200: {exporter.health()}"
        )
        [stalled] = report["loops"]
        assert re.fullmatch(rf"worker pid {pid}: leadership loop silent for \d+ s", stalled)
        assert (report["database"], report["workers"]) == ("ok", "ok")  # the rest is alive

        # The hang CI saw at teardown: no job in hand, a statement stuck on its connection.
        took, stopped = stop_worker(sup)
        blocker.rollback()
    assert took < service.STOP_LOOPS_SECONDS + service.STOP_CLOSE_SECONDS + 3, f"{took:.1f} s"
    assert re.search(r"stopped: (worker:)?worker-00 \(exit status 1\)", stopped), stopped
    [limit] = [
        line for line in worker_lines(sup, pid) if line["msg"].startswith("stop time limit reached")
    ]
    assert (limit["in_flight"], limit["stuck_loops"]) == (0, ["leadership"])
    assert "leader_elect" in sup.output()  # where it hung, in the stack dump


SCHEDULE_DUE = "'payments.job_schedule_due(integer)'::regprocedure"


@pytest.mark.timeout(90)
def test_a_loop_that_raises_ends_the_process_with_one_line_and_supervisord_restarts_it(
    one_worker: tuple[Supervisord, Exporter], db_url: str, standin: StandinProcess
) -> None:
    sup, _ = one_worker
    pid = sup.workers("RUNNING")["worker-00"]["pid"]
    original = psql_ok(db_url, f"SELECT pg_get_functiondef({SCHEDULE_DUE})")
    # The database answers what the scheduler does not expect (NULL for a count): a bug
    # in the loop, not a database error it retries.
    psql_ok(
        db_url,
        "CREATE OR REPLACE FUNCTION payments.job_schedule_due(p_max integer) RETURNS integer"
        " LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp"
        " AS 'SELECT NULL::integer'",
    )
    exited = re.compile(r"exited: (worker:)?worker-00 \(exit status 70; not expected\)")
    try:
        wait_until(
            lambda: any(exited.search(line) for line in sup.supervisord_lines()),
            15,
            lambda: f"the worker did not exit 70:\n{sup.output()[-3000:]}",
        )
    finally:
        psql_ok(db_url, original)
    critical = [line for line in worker_lines(sup, pid) if line["level"] == "CRITICAL"]
    assert len(critical) == 1, critical
    assert critical[0]["msg"].startswith("scheduler loop failed: TypeError: ")
    assert critical[0]["msg"].endswith("; stopping the worker for supervisord to restart it")
    assert critical[0]["loop"] == "scheduler"
    assert "job_schedule_due" in critical[0]["exc_info"]  # the traceback, in the same line

    def restarted() -> int | None:
        info = sup.workers("RUNNING").get("worker-00")
        started = {line["pid"] for line in sup.json_lines() if line["msg"] == "worker started"}
        if info and info["pid"] != pid and info["pid"] in started:
            return int(info["pid"])
        return None

    wait_until(restarted, 20, lambda: f"worker-00 was not restarted:\n{sup.output()[-3000:]}")
    payment = json.loads(psql_ok(db_url, payment_sql(2500, "after the restart")))
    assert payment["status"] == "pending"
