"""The whole system as an operator runs it: supervisord.conf, worker processes, psql, signals."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from stripe_standin.client import api_error, card_declined
from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import (
    API_KEY,
    DB_PASSWORD,
    LOG_KEYS,
    RUN_DIR,
    StartSupervisord,
    Supervisord,
    base_env,
    payment_sql,
    pid_alive,
    psql,
    psql_bin,
    psql_ok,
    role_facts,
    session_roles,
    wait_until,
)

pytestmark = pytest.mark.acceptance

WORKERS_CONF = RUN_DIR / "workers.conf"

# The seed's manual test, word for word as a developer types it in a shell.
SEED_COMMAND = (
    """psql "$url" -XAtc "SELECT create_payment_intent_sync(2500, 'Test payment \\$25.00')\""""
)

JOBS_SQL = """
SELECT coalesce(json_agg(j ORDER BY j.id), '[]') FROM (
    SELECT id, state, attempt, attempted_by, args->>'payment_id' AS payment_id
    FROM metadata.river_job WHERE kind = 'create_payment_intent'
) AS j"""


def jobs(url: str) -> list[dict[str, Any]]:
    value: list[dict[str, Any]] = json.loads(psql_ok(url, JOBS_SQL))
    return value


def worker_pid(worker_id: str) -> int:
    """The pid in a worker_id (host:process_name:pid, the attempted_by value)."""
    return int(worker_id.rsplit(":", 1)[1])


def pay(url: str, amount: int, description: str) -> dict[str, Any]:
    out = psql_ok(url, payment_sql(amount, description))
    value: dict[str, Any] = json.loads(out, parse_float=Decimal)
    return value


def pay_concurrently(url: str, count: int, prefix: str) -> list[dict[str, Any]]:
    """`count` psql processes at once, each making one payment."""
    procs = [
        subprocess.Popen(
            [psql_bin(), url, "-XAtc", payment_sql(1000 + i, f"{prefix} {i}")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    results = []
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        results.append(json.loads(out, parse_float=Decimal))
    return results


def spawned_pids(sup: Supervisord) -> dict[int, str]:
    """pid -> program name, from supervisord's "spawned: 'NAME' with pid N" lines."""
    found = {}
    for line in sup.supervisord_lines():
        match = re.search(r"spawned: '([^']+)' with pid (\d+)", line)
        if match:
            found[int(match.group(2))] = match.group(1)
    return found


@pytest.mark.timeout(90)
def test_payments_through_psql_are_shared_by_both_workers_and_made_once(
    supervisor: Supervisord, db_url: str, standin: StandinProcess
) -> None:
    env = {**base_env(), "url": db_url}
    env["PATH"] = f"{Path(psql_bin()).parent}:{env['PATH']}"
    seed = subprocess.run(
        ["bash", "-c", SEED_COMMAND],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert seed.returncode == 0, seed.stderr
    raw = seed.stdout.strip()
    assert '"amount": 25.00' in raw
    first = json.loads(raw, parse_float=Decimal)
    assert first["amount"] == Decimal("25.00")
    assert first["currency"] == "USD"
    assert first["status"] == "pending"
    assert first["description"] == "Test payment $25.00"
    assert first["client_secret"].startswith("pi_")

    payments = [first] + [pay(db_url, 100 * (i + 1), f"payment {i}") for i in range(20)]
    # One process may win every claim when payments come one at a time: then send several
    # at once, which no single claim can take whole before the other process wakes.
    for round_ in range(5):
        takers = {worker_pid(job["attempted_by"][-1]) for job in jobs(db_url)}
        if len(takers) >= 2:
            break
        payments += pay_concurrently(db_url, 8, f"round {round_}")

    running_pids = {p["pid"] for p in supervisor.workers("RUNNING").values()}
    assert len(running_pids) == 2
    all_jobs = jobs(db_url)
    assert len(all_jobs) == len(payments)
    assert {job["payment_id"] for job in all_jobs} == {p["payment_id"] for p in payments}
    for job in all_jobs:
        assert job["state"] == "completed", job
        assert job["attempt"] == 1, job
        assert job["attempted_by"], job
    takers = {worker_pid(job["attempted_by"][-1]) for job in all_jobs}
    assert takers == running_pids, "both worker processes take jobs"

    intents = standin.admin.payment_intents()
    per_payment = Counter(e["payment_intent"]["metadata"]["payment_id"] for e in intents)
    assert len(intents) == len(payments), "no PaymentIntent beyond one per payment"
    assert per_payment == Counter(p["payment_id"] for p in payments)
    secrets = {e["payment_intent"]["client_secret"] for e in intents}
    assert {p["client_secret"] for p in payments} == secrets
    for payment in payments:
        assert payment["status"] == "pending"


BAD_INPUTS = [
    ("0, 'x'", "amount_cents must be between 50 and 99999999 for USD, got 0"),
    ("-1, 'x'", "amount_cents must be between 50 and 99999999 for USD, got -1"),
    ("NULL, 'x'", "amount_cents is required"),
    ("100000000, 'x'", "amount_cents must be between 50 and 99999999 for USD, got 100000000"),
    (f"2500, '{'d' * 1001}'", "description must be at most 1000 characters, got 1001"),
]


def test_the_workers_connect_as_their_login_which_is_no_superuser(
    supervisor: Supervisord, db_url: str, worker_login: str, standin: StandinProcess
) -> None:
    payment = pay(db_url, 2500, "as the login")
    assert payment["status"] == "pending"
    workers = {p["pid"] for p in supervisor.workers("RUNNING").values()}
    # Each worker's pool, and the three dedicated connections every worker keeps.
    wanted = {"payment-worker listener", "payment-worker leases", "payment-worker leader"}

    def all_connected() -> dict[str, set[str]] | None:
        roles = session_roles(db_url)
        pools = [app for app in roles if app.rsplit(":", 1)[-1].isdigit()]
        pool_pids = {int(app.rsplit(":", 1)[-1]) for app in pools}
        return roles if wanted <= set(roles) and pool_pids == workers else None

    roles = wait_until(
        all_connected, 15, lambda: f"not every worker connection is open: {session_roles(db_url)}"
    )
    assert {user for users in roles.values() for user in users} == {worker_login}
    superuser, member_of = role_facts(db_url, worker_login)
    assert superuser is False
    assert member_of == ["payment_worker"]


def test_bad_input_through_psql_is_a_clear_error_and_records_nothing(
    supervisor: Supervisord, db_url: str, standin: StandinProcess
) -> None:
    for args, message in BAD_INPUTS:
        result = psql(db_url, f"SELECT create_payment_intent_sync({args})")
        assert result.returncode != 0, args[:20]
        assert result.stdout == "", args[:20]
        first = result.stderr.splitlines()[0]
        assert first == f"ERROR:  {message}", args[:20]
    counts = psql_ok(
        db_url,
        "SELECT (SELECT count(*) FROM payments.transactions),"
        " (SELECT count(*) FROM metadata.river_job)",
    )
    assert counts == "0|0"
    assert standin.admin.payment_intents() == []


def test_without_river_worker_count_one_worker_runs(
    start_supervisord: StartSupervisord, db_url: str, worker_db_url: str, standin: StandinProcess
) -> None:
    env = {
        "DATABASE_URL": worker_db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "PATH": base_env()["PATH"],
        "HOME": base_env()["HOME"],
    }
    sup = start_supervisord(env, bare=True)
    running = sup.wait_workers_running(1)
    assert list(running) == ["worker-00"]
    # The sentinel: workers (autostart=false) are started only by the scaler, which
    # wait_workers_running saw EXITED, and supervisord logs each spawn as it happens.
    # No other worker can start from here on, and none has.
    assert set(spawned_pids(sup).values()) == {
        "worker-00",
        "worker-scaler",
        "metrics",
        "metrics-reaper",
        # spawned, then stopped at its own request: no STRIPE_WEBHOOK_SECRET here
        "webhooks",
    }
    assert list(sup.workers()) == ["worker-00"], "no spare worker slot is declared"
    environ = Path(f"/proc/{running['worker-00']['pid']}/environ").read_bytes()
    assert b"RIVER_WORKER_COUNT" not in environ
    scaler = [line for line in sup.json_lines() if line["logger"] == "worker.scaler"]
    assert [(line["msg"], line["count"]) for line in scaler] == [("workers started", 1)]

    payment = pay(db_url, 2500, "one worker")
    assert payment["status"] == "pending"
    assert [job["state"] for job in jobs(db_url)] == ["completed"]
    assert len(standin.admin.intents_with_metadata("payment_id", payment["payment_id"])) == 1


@pytest.mark.timeout(90)
def test_status_lists_exactly_the_workers_that_run_whatever_an_earlier_run_left(
    start_supervisord: StartSupervisord, worker_env: dict[str, str]
) -> None:
    # An earlier supervisord ran five: its file is read first, then replaced.
    WORKERS_CONF.parent.mkdir(exist_ok=True)
    WORKERS_CONF.write_text("[program:worker]\nnumprocs=5\n")
    sup = start_supervisord({**worker_env, "RIVER_WORKER_COUNT": "3"})
    sup.wait_workers_running(3)
    status = sup.ctl("status")
    worker_rows = [line.split() for line in status.stdout.splitlines() if "worker-0" in line]
    assert [(row[0], row[1]) for row in worker_rows] == [
        ("worker:worker-00", "RUNNING"),
        ("worker:worker-01", "RUNNING"),
        ("worker:worker-02", "RUNNING"),
    ], status.stdout
    assert "numprocs=3" in WORKERS_CONF.read_text()
    assert {name for name in spawned_pids(sup).values() if name.startswith("worker-0")} == {
        "worker-00",
        "worker-01",
        "worker-02",
    }
    assert "No file matches via include" not in sup.output()


def test_sigterm_mid_job_finishes_the_job_exits_0_and_is_restarted(
    supervisor: Supervisord, db_url: str, standin: StandinProcess
) -> None:
    standin.admin.configure(latency_ms=1500)
    rpc = subprocess.Popen(
        [psql_bin(), db_url, "-XAtc", payment_sql(2500, "interrupted")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )

    def running_job() -> dict[str, Any] | None:
        found = [job for job in jobs(db_url) if job["state"] == "running"]
        return found[0] if found else None

    job = wait_until(running_job, 10, "the job never started running")
    worker_id = job["attempted_by"][-1]
    name = worker_id.split(":")[-2]
    ctl = supervisor.ctl("pid", f"worker:{name}")
    assert ctl.returncode == 0, ctl.stdout + ctl.stderr
    pid = int(ctl.stdout.strip())
    assert pid == worker_pid(worker_id)
    os.kill(pid, signal.SIGTERM)

    out, err = rpc.communicate(timeout=30)
    assert rpc.returncode == 0, err
    result = json.loads(out, parse_float=Decimal)
    assert result["status"] == "pending"
    [done] = jobs(db_url)
    assert (done["state"], done["attempt"], done["attempted_by"]) == ("completed", 1, [worker_id])
    intents = standin.admin.intents_with_metadata("payment_id", result["payment_id"])
    assert len(intents) == 1

    exited = re.compile(rf"exited: (worker:)?{name} \(exit status 0; expected\)")
    wait_until(
        lambda: any(exited.search(line) for line in supervisor.supervisord_lines()),
        10,
        lambda: f"supervisord did not report {name} exiting 0:\n{supervisor.output()}",
    )
    assert not pid_alive(pid)

    def restarted() -> bool:
        info = supervisor.workers("RUNNING").get(name)
        return info is not None and info["pid"] != pid

    wait_until(restarted, 10, lambda: f"{name} was not restarted:\n{supervisor.output()}")
    assert len(supervisor.workers("RUNNING")) == 2

    # The stop began while the job was in hand, and the job finished before the exit.
    mine = [line["msg"] for line in supervisor.json_lines() if line["pid"] == pid]
    assert mine.index("stopping: finishing the jobs in hand") < mine.index("job completed")
    assert mine[-1] == "worker stopped"


@pytest.mark.timeout(60)
def test_bad_config_is_one_clear_json_line_without_secrets(
    start_supervisord: StartSupervisord, worker_db_url: str, standin: StandinProcess
) -> None:
    assert DB_PASSWORD in worker_db_url
    env = {
        "DATABASE_URL": worker_db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "RIVER_WORKER_COUNT": "1",
        "DB_MAX_CONNS": "abc",
    }
    sup = start_supervisord(env)
    # It asks supervisord to leave it stopped: one start, one line, no crash loop.
    wait_until(
        lambda: sup.workers().get("worker-00", {}).get("statename") == "STOPPED",
        30,
        lambda: f"worker-00 did not stay stopped:\n{sup.output()}",
    )
    # No sleep to prove that no retry follows: supervisord restarts only a process that
    # exited on its own (EXITED, BACKOFF), never one it stopped, as it stopped this one at
    # the worker's request. Its "stopped:" line is the sentinel: from there the one spawn
    # line below is final.
    wait_until(
        lambda: re.search(r"stopped: (worker:)?worker-00 \(exit status 78\)", sup.output()),
        10,
        lambda: f"no stopped line:\n{sup.output()}",
    )
    worker_pids = [pid for pid, name in spawned_pids(sup).items() if name == "worker-00"]
    assert len(worker_pids) == 1, sup.output()
    for pid in worker_pids:
        mine = [line for line in sup.json_lines() if line["pid"] == pid]
        assert len(mine) == 1, mine
        assert set(mine[0]) >= LOG_KEYS
        assert mine[0]["level"] == "CRITICAL"
        assert mine[0]["msg"] == (
            "invalid configuration: DB_MAX_CONNS must be a whole number, got 'abc'"
        )
    assert re.search(r"stopped: (worker:)?worker-00 \(exit status 78\)", sup.output()), sup.output()
    for line in sup.program_lines():
        assert json.loads(line)["pid"] in spawned_pids(sup), line
    output = sup.output()
    assert API_KEY not in output
    assert DB_PASSWORD not in output


@pytest.mark.timeout(90)
def test_logs_are_json_lines_without_secrets(
    start_supervisord: StartSupervisord,
    worker_env: dict[str, str],
    db_url: str,
    standin: StandinProcess,
) -> None:
    sup = start_supervisord({**worker_env, "LOG_LEVEL": "DEBUG"})
    sup.wait_workers_running(2)
    made = [pay(db_url, 2500 + i, f"logged {i}") for i in range(4)]
    standin.admin.script([card_declined()])
    declined = psql(db_url, payment_sql(2500, "declined"))
    assert declined.returncode != 0
    assert "Payment intent creation failed: Your card was declined." in declined.stderr
    # Attempt 1: the request and its two immediate retries fail; attempt 2, ~1 s later, works.
    # Unsaved 500s (save_5xx off), so each retry runs afresh; a saved 500 is replayed and
    # searched for instead (tests/integration/test_stripe_idempotency.py).
    standin.admin.configure(save_5xx=False)
    standin.admin.script([api_error()] * 3)
    made.append(pay(db_url, 2500, "retried"))
    assert [job["attempt"] for job in jobs(db_url)][-1] == 2
    assert sup.stop() == 0

    spawned = spawned_pids(sup)
    lines = sup.program_lines()
    assert lines
    levels: Counter[str] = Counter()
    for line in lines:
        record = json.loads(line)
        assert isinstance(record, dict), line
        assert set(record) >= LOG_KEYS, line
        assert record["pid"] in spawned, line
        levels[record["level"]] += 1
    assert levels["INFO"] and levels["WARNING"] and levels["ERROR"], levels
    own = Counter(sup.supervisord_lines())
    assert max(own.values()) == 1, "supervisord prints each of its lines once"
    worker_lines = [r for r in sup.json_lines() if spawned[r["pid"]].startswith("worker-0")]
    assert {spawned[r["pid"]] for r in worker_lines} == {"worker-00", "worker-01"}

    output = sup.output()
    client_secrets = [e["payment_intent"]["client_secret"] for e in standin.admin.payment_intents()]
    assert len(client_secrets) == len(made)
    assert {p["client_secret"] for p in made} == set(client_secrets)
    for secret in client_secrets:
        assert secret not in output
    assert "_secret_" not in output
    assert API_KEY not in output
    assert DB_PASSWORD not in output
