"""Mistakes a newcomer makes, under the real supervisord.conf: each program that cannot run
says so in one line, exits 78 and is left STOPPED - no traceback, no restart loop."""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from common.schema import NOT_DEPLOYED
from stripe_standin.process import StandinProcess
from tests import pg
from tests.acceptance.conftest import (
    API_KEY,
    ROOT,
    StartSupervisord,
    Supervisord,
    base_env,
    free_port,
    pid_alive,
    wait_until,
)

pytestmark = pytest.mark.acceptance


def spawned(sup: Supervisord) -> dict[int, str]:
    """pid -> program, from supervisord's "spawned: 'NAME' with pid N" lines."""
    found = {}
    for line in sup.supervisord_lines():
        match = re.search(r"spawned: '([^']+)' with pid (\d+)", line)
        if match:
            found[int(match.group(2))] = match.group(1)
    return found


def wait_stopped_by_request(sup: Supervisord, name: str, timeout: float = 30) -> None:
    """Until supervisord logs that it stopped `name` (at its request) with status 78: from
    then on supervisord will not start it again, so the lines so far are final."""
    pattern = re.compile(rf"stopped: (\S+:)?{re.escape(name)} \(exit status 78\)")
    wait_until(
        lambda: pattern.search(sup.output()),
        timeout,
        lambda: f"{name} did not stop itself with status 78:\n{sup.output()}",
    )


def own_lines(sup: Supervisord, name: str) -> list[str]:
    """The messages logged by each spawn of `name`, which must have been spawned once."""
    pids = [pid for pid, program in spawned(sup).items() if program == name]
    assert len(pids) == 1, f"{name} spawned {len(pids)} times:\n{sup.output()}"
    assert not pid_alive(pids[0])
    return [line["msg"] for line in sup.json_lines() if line["pid"] == pids[0]]


@pytest.fixture
def schemaless_db() -> Iterator[str]:
    """A database without the schema, as a URL; dropped (its sessions ended) at the end."""
    name = f"pw_noschema_{free_port()}"
    with psycopg.connect(pg.url("postgres"), autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            yield pg.url(name)
        finally:
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.mark.timeout(90)
def test_workers_on_a_database_without_the_schema_say_so_once_and_stay_stopped(
    schemaless_db: str, start_supervisord: StartSupervisord, standin: StandinProcess
) -> None:
    port = free_port()
    sup = start_supervisord(
        {
            "DATABASE_URL": schemaless_db,
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": standin.url,
            "RIVER_WORKER_COUNT": "2",
            "METRICS_PORT": str(port),
        }
    )
    for name in ("worker-00", "worker-01"):
        wait_stopped_by_request(sup, name)
        assert own_lines(sup, name) == [NOT_DEPLOYED]
    assert {p["statename"] for p in sup.workers().values()} == {"STOPPED"}
    assert all(p["pid"] == 0 for p in sup.workers().values())
    assert "Traceback" not in sup.output()
    assert "does not exist" not in sup.output()
    # The image's health check sees it: the exporter runs, no worker does.
    _, line = wait_until(
        lambda: (check := healthcheck(port))[0] == 1 and "no live worker" in check[1] and check,
        30,
        lambda: f"the health check did not say unhealthy: {healthcheck(port)}",
    )
    assert line.startswith("unhealthy: ")


def healthcheck(port: int) -> tuple[int, str]:
    """`python -m metrics.healthcheck`, as the image's HEALTHCHECK runs it."""
    done = subprocess.run(
        [sys.executable, "-m", "metrics.healthcheck"],
        cwd=ROOT,
        env={**base_env(), "METRICS_PORT": str(port), "METRICS_HOST": "0.0.0.0"},  # noqa: S104
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return done.returncode, done.stdout.strip()


@pytest.mark.timeout(90)
def test_the_health_check_passes_once_the_workers_beat(
    supervisor: Supervisord, worker_env: dict[str, str]
) -> None:
    port = int(worker_env["METRICS_PORT"])
    _, line = wait_until(
        lambda: (check := healthcheck(port))[0] == 0 and check,
        30,
        lambda: f"the health check did not pass: {healthcheck(port)}",
    )
    assert line.startswith('healthy: {"database": "ok"')


@pytest.mark.timeout(90)
def test_without_database_url_every_program_says_so_once_and_none_restarts(
    start_supervisord: StartSupervisord, standin: StandinProcess
) -> None:
    sup = start_supervisord(
        {
            "STRIPE_API_KEY": API_KEY,
            "STRIPE_API_BASE": standin.url,
            "METRICS_PORT": str(free_port()),
        }
    )
    wait_stopped_by_request(sup, "metrics")
    assert own_lines(sup, "metrics") == ["invalid configuration: DATABASE_URL is required"]
    wait_stopped_by_request(sup, "worker-00")
    [worker_line] = own_lines(sup, "worker-00")
    assert worker_line.startswith("invalid configuration: DATABASE_URL")
    wait_stopped_by_request(sup, "webhooks")
    states = {p["name"]: p["statename"] for p in sup.processes()}
    assert states["metrics"] == states["webhooks"] == states["worker-00"] == "STOPPED"
    assert "not expected" not in sup.output()
    assert "Traceback" not in sup.output()


@pytest.mark.timeout(90)
def test_an_exporter_whose_port_is_taken_names_metrics_port_and_stays_stopped(
    schemaless_db: str, start_supervisord: StartSupervisord, standin: StandinProcess
) -> None:
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        sup = start_supervisord(
            {
                "DATABASE_URL": schemaless_db,
                "STRIPE_API_KEY": API_KEY,
                "STRIPE_API_BASE": standin.url,
                "METRICS_PORT": str(port),
            }
        )
        wait_stopped_by_request(sup, "metrics")
    [line] = own_lines(sup, "metrics")
    assert line.startswith(f"cannot listen on 127.0.0.1:{port}: ")
    assert line.endswith("is another exporter running? METRICS_PORT picks another port")
