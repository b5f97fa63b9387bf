"""`make run`, i.e. scripts/with-env.sh scripts/run.sh: the lines it prints work as written
(create a payment, pay it with a test card, read it succeeded, told by the webhook), and
Ctrl-C stops supervisord, the workers, the receiver and the stand-in."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import psycopg
import pytest

from stripe_standin.client import StandinAdmin
from tests.acceptance.conftest import (
    DB_PASSWORD,
    ROOT,
    SOCKET,
    base_env,
    database_url_with_password,
    fail_if_socket_in_use,
    free_port,
    pid_alive,
    psql_bin,
    role_facts,
    rpc,
    session_roles,
    wait_until,
)
from tests.pg import url as pg_url

pytestmark = pytest.mark.acceptance

# Settings of the worker and the stand-in a developer's shell might carry: not for this test.
_FOREIGN = re.compile(
    r"^(STRIPE_|STANDIN_|RIVER_|DB_|WORKER_|WEBHOOK_|RECONCILE_|LOG_LEVEL$|PAYMENT_CURRENCY$"
    r"|SUPERVISOR_|METRICS_)"
)


def run_env(database_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not _FOREIGN.match(k)}
    # The test run's own: with-env.sh takes the caller's PATH from here, and the tests' own
    # private cluster is not this run's to stop.
    env.pop("PW_CALLER_PATH", None)
    env.pop("PW_PG_STARTED", None)
    env.update(
        DATABASE_URL=database_url,
        STANDIN_PORT="0",
        PW_PG_MODE="url",
        WEBHOOK_PORT=str(free_port()),
        # Not 9187: another checkout's exporter may hold it (make run refuses then).
        METRICS_PORT=str(free_port()),
    )
    return env


def _restore_pg_env(pg_env: Path, previous: bytes | None) -> None:
    if pg_env.exists() and DB_PASSWORD.encode() in pg_env.read_bytes():
        if previous is None:
            pg_env.unlink()
        else:
            pg_env.write_bytes(previous)


def pasted(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A printed line run as a developer pastes it into a shell; it must succeed."""
    # From a directory of its own, as a new shell starts: the line must not need the checkout.
    done = subprocess.run(
        ["bash", "-c", line],
        env=env,
        cwd=tempfile.gettempdir(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done


def running_worker_pids() -> list[int]:
    try:
        infos = rpc("getAllProcessInfo")
    except OSError:
        return []
    return [p["pid"] for p in infos if p["group"] == "worker" and p["statename"] == "RUNNING"]


@pytest.mark.timeout(100)
def test_make_run_prints_working_lines_to_create_pay_and_read_and_ctrl_c_stops_everything(
    pw_database: psycopg.Connection, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dbname = pw_database.info.dbname
    url = database_url_with_password(dbname)
    assert DB_PASSWORD in url
    fail_if_socket_in_use()
    # with-env.sh rewrites the checkout's shared .run/pg.env for DATABASE_URL, password
    # included: put the previous one back afterwards unless someone rewrote it meanwhile.
    pg_env = ROOT / ".run" / "pg.env"
    previous = pg_env.read_bytes() if pg_env.exists() else None
    request.addfinalizer(lambda: _restore_pg_env(pg_env, previous))
    log_path = tmp_path / "make-run.log"
    # Truncating, not appending, as `make run >log` would: run.sh must cope with that.
    with log_path.open("wb") as log:
        run = subprocess.Popen(
            [str(ROOT / "scripts" / "with-env.sh"), str(ROOT / "scripts" / "run.sh")],
            cwd=ROOT,
            env=run_env(url),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, as a terminal's foreground job
        )

    def output() -> str:
        return log_path.read_text(errors="replace")

    def alive_or_fail() -> None:
        if run.poll() is not None:
            pytest.fail(f"run.sh exited with status {run.returncode}:\n{output()}")

    try:

        def ready() -> list[int]:
            alive_or_fail()
            return running_worker_pids() if "Try it" in output() else []

        workers = wait_until(ready, 60, lambda: f"no worker became RUNNING:\n{output()}")
        assert len(workers) == 1
        text = output()
        # The admin deployed; the workers (and the exporter) connect as a login that is
        # only in payment_worker, since this server trusts a password-less local login.
        assert "workers: as payment_worker_app (a login in role payment_worker only)" in text
        assert (
            "webhooks: the receiver as payment_webhook_app (a login in role payment_webhook only)"
            in text
        )

        def both_logins() -> dict[str, set[str]]:
            roles = session_roles(url)
            users = {user for users in roles.values() for user in users}
            return roles if {"payment_worker_app", "payment_webhook_app"} <= users else {}

        roles = wait_until(both_logins, 15, lambda: f"sessions: {session_roles(url)}")
        assert {user for users in roles.values() for user in users} == {
            "payment_worker_app",
            "payment_webhook_app",
        }
        assert role_facts(url, "payment_worker_app") == (False, ["payment_worker"])
        assert role_facts(url, "payment_webhook_app") == (False, ["payment_webhook"])

        # The printed lines, run as a developer pastes them into a shell.
        rpc_line = re.search(r"^\s*(psql -P pager=off .*create_payment_intent_sync.*)$", text, re.M)
        watch_line = re.search(r"^\s*(psql .*metadata\.river_job.*)$", text, re.M)
        assert rpc_line and watch_line, text
        safe_url = pg_url(dbname, password=None)
        assert rpc_line.group(1) == (
            f'psql -P pager=off "{safe_url}" -c '
            "\"SELECT create_payment_intent_sync(2500, 'Test payment \\$25.00');\""
        )
        shell_env = {**base_env(), "PATH": f"{Path(psql_bin()).parent}:{base_env()['PATH']}"}
        if os.environ.get("PGPASSWORD"):
            shell_env["PGPASSWORD"] = os.environ["PGPASSWORD"]
        paid = pasted(rpc_line.group(1), shell_env)
        [row] = [line.strip() for line in paid.stdout.splitlines() if '{"amount"' in line]
        assert '"amount": 25.00' in row
        payment = json.loads(row, parse_float=Decimal)
        assert payment["amount"] == Decimal("25.00")
        assert (payment["currency"], payment["status"]) == ("USD", "pending")
        assert payment["description"] == "Test payment $25.00"
        watched = pasted(watch_line.group(1), shell_env)
        assert re.search(r"\|\s*completed\s*\|\s*1\s*\|", watched.stdout), watched.stdout

        # Pay it as a customer would, then read it succeeded: the webhook told the database
        # (reconciliation waits RECONCILE_AFTER, 10 minutes, so it is not what did it).
        pay_line = re.search(
            r"^\s*(cd \S+ && STRIPE_API_KEY=\S+ \S+ -m stripe_standin pay .*)$", text, re.M
        )
        read_line = re.search(r"^\s*(psql .*get_payment\('PAYMENT_ID'\).*)$", text, re.M)
        assert pay_line and read_line, text
        payment_id = payment["payment_id"]
        card = pasted(pay_line.group(1).replace("PAYMENT_ID", payment_id), shell_env)
        assert "succeeded" in card.stdout, card.stdout

        def read_status() -> str | None:
            read = pasted(read_line.group(1).replace("PAYMENT_ID", payment_id), shell_env)
            found = re.search(r'"status": "(\w+)"', read.stdout)
            return found.group(1) if found and found.group(1) == "succeeded" else None

        wait_until(read_status, 30, lambda: f"the payment never read succeeded:\n{output()}")
        with psycopg.connect(url, autocommit=True) as admin:
            sources = admin.execute(
                "SELECT DISTINCT source FROM payments.stripe_events WHERE payment_id = %s",
                (payment_id,),
            ).fetchall()
        assert sources == [("webhook",)]

        standin = re.search(r"stand-in at (http://127\.0\.0\.1:\d+) \(pid (\d+)", text)
        assert standin, text
        standin_url, standin_pid = standin.group(1), int(standin.group(2))
        intents = StandinAdmin(standin_url).payment_intents()
        assert [i["payment_intent"]["metadata"]["payment_id"] for i in intents] == [
            payment["payment_id"]
        ]
        supervisord_pid = rpc("getPID")

        # Ctrl-C: SIGINT to the whole foreground process group.
        stopped_at = time.monotonic()
        os.killpg(run.pid, signal.SIGINT)
        assert run.wait(60) == 0, output()
        stop_seconds = time.monotonic() - stopped_at
        for pid in [supervisord_pid, standin_pid, *workers]:
            assert not pid_alive(pid), f"pid {pid} still runs after Ctrl-C:\n{output()}"
        assert not SOCKET.exists()
        assert not StandinAdmin(standin_url, timeout=1).health()
        assert stop_seconds < 40

        final = output()
        # Whole lines only: no writer overwrote another's output.
        for line in final.splitlines():
            if line.startswith("{") or line.endswith("}") or '"pid": ' in line:
                assert line.startswith("{"), line
                assert isinstance(json.loads(line), dict), line
        assert "worker started" in final
        assert "\x00" not in final
        # The stand-in outlived the workers (they may still be talking to it) and stopped.
        assert final.rindex("stopped: worker-00 (exit status 0)") < final.rindex(
            "stand-in | stopped"
        )
        assert DB_PASSWORD not in final
        # Only the customer's placeholder key of the pay line, which is nobody's secret.
        printed_keys = set(re.findall(r"\b(?:sk|rk)_(?:test|live)_\w+", final))
        assert printed_keys <= {"sk_test_customer"}, f"an API key was printed: {printed_keys}"
        assert "whsec_" not in final, "the webhook signing secret was printed"
        assert payment["client_secret"] not in final
    finally:
        if run.poll() is None:
            os.killpg(run.pid, signal.SIGTERM)
            run.wait(60)
