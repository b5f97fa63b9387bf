"""`make run` given a mistake: one line that says what is wrong and what to do, a failing
exit status, and nothing of ours left running - checked before anything starts."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.acceptance.conftest import ROOT, database_url_with_password, free_port, pid_alive
from tests.acceptance.test_make_run import run_env

pytestmark = pytest.mark.acceptance

_MAKE_ERROR = re.compile(r"^make(\[\d+\])?: \*\*\* ")


def processes_in(checkout: Path) -> set[int]:
    """Live processes whose working directory is `checkout` (or below it)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cwd = os.readlink(entry / "cwd")
        except OSError:
            continue
        if (cwd == str(checkout) or cwd.startswith(f"{checkout}/")) and pid_alive(int(entry.name)):
            found.add(int(entry.name))
    return found


def make_env(env: dict[str, str]) -> dict[str, str]:
    """`env` as a shell prompt's: not inside the test run's own make."""
    return {k: v for k, v in env.items() if k not in ("MAKEFLAGS", "MAKELEVEL", "MFLAGS")}


def make_run(env: dict[str, str], checkout: Path = ROOT) -> subprocess.CompletedProcess[str]:
    """`make run` that is expected to refuse: it must return on its own, quickly."""
    return subprocess.run(
        ["make", "--no-print-directory", "run"],
        cwd=checkout,
        env=make_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def refused(env: dict[str, str]) -> str:
    """Runs `make run`, which must fail with exactly one line of ours (make's own
    `*** Error` aside) and leave nothing running; returns that line."""
    before = processes_in(ROOT)
    done = make_run(env)
    assert done.returncode != 0, done.stdout + done.stderr
    assert done.stdout == "", done.stdout
    lines = [line for line in done.stderr.splitlines() if not _MAKE_ERROR.match(line)]
    assert len(lines) == 1, done.stderr
    assert processes_in(ROOT) <= before, "make run left something running"
    assert not (ROOT / ".run" / "standin.pid").exists()
    return lines[0]


@pytest.fixture
def url(pw_database: psycopg.Connection) -> str:
    return database_url_with_password(pw_database.info.dbname)


@pytest.fixture
def busy_ports() -> Iterator[list[int]]:
    """Three ports something listens on."""
    held = []
    for _ in range(3):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        held.append(sock)
    yield [int(s.getsockname()[1]) for s in held]
    for sock in held:
        sock.close()


@pytest.mark.parametrize("key", ["pk_test_51HxAbCdEf", "whsec_abc", "sk_test_has space"])
def test_a_key_that_is_not_a_secret_key_is_refused_up_front(url: str, key: str) -> None:
    line = refused({**run_env(url), "STRIPE_API_KEY": key})
    assert line.startswith("make run: error: STRIPE_API_KEY is ")
    assert "sk_test_" in line and "rk_" in line
    assert key not in line
    if key.startswith("pk_"):
        assert "a publishable key (pk_…)" in line


@pytest.mark.parametrize("count", ["0", "33", "two", "-1"])
def test_a_worker_count_the_scaler_would_refuse_is_refused_up_front(url: str, count: str) -> None:
    line = refused({**run_env(url), "RIVER_WORKER_COUNT": count})
    assert (
        line
        == f"make run: error: RIVER_WORKER_COUNT must be a whole number from 1 to 32, got '{count}'"
    )


def test_every_port_in_use_is_one_line_naming_its_variable(url: str, busy_ports: list[int]) -> None:
    standin, webhook, metrics = busy_ports
    env = {
        **run_env(url),
        "STANDIN_PORT": str(standin),
        "WEBHOOK_PORT": str(webhook),
        "METRICS_PORT": str(metrics),
    }
    before = processes_in(ROOT)
    done = make_run(env)
    assert done.returncode != 0
    lines = [line for line in done.stderr.splitlines() if not _MAKE_ERROR.match(line)]
    assert [line.split(" is in use")[0] for line in lines] == [
        f"make run: error: port {standin} (STANDIN_PORT, the Stripe stand-in)",
        f"make run: error: port {webhook} (WEBHOOK_PORT, the webhook receiver)",
        f"make run: error: port {metrics} (METRICS_PORT, the Prometheus exporter)",
    ]
    assert "STANDIN_PORT=0 picks a free one" in lines[0]
    assert "set METRICS_PORT to a free port; METRICS_PORT=" in lines[2]
    assert processes_in(ROOT) <= before


def test_a_database_that_does_not_exist_is_one_line_with_a_createdb_hint(url: str) -> None:
    missing = f"pw_missing_{free_port()}"
    line = refused({**run_env(url.rsplit("/", 1)[0] + "/" + missing)})
    assert line.startswith(f'ensure-postgres.sh: error: database "{missing}" does not exist on ')
    assert "createdb -h " in line and line.split("createdb")[1].split(")")[0].endswith(missing)
    assert "FATAL" not in line


def test_a_keyword_string_naming_a_missing_database_is_read_as_the_worker_reads_it(
    url: str,
) -> None:
    missing = f"pw_missing_{free_port()}"
    conninfo = psycopg.conninfo.conninfo_to_dict(url)
    keywords = (
        f"host={conninfo['host']} port={conninfo['port']} dbname={missing} user={conninfo['user']}"
    )
    line = refused({**run_env(keywords)})
    assert f'database "{missing}" does not exist' in line


def test_with_no_server_on_the_port_the_line_names_the_users_database(url: str) -> None:
    port = free_port()  # nothing listens there
    line = refused({**run_env(f"postgresql://postgres@127.0.0.1:{port}/my_payments")})
    named = f"(postgresql://postgres@127.0.0.1:{port}/my_payments): "
    assert line.startswith(f"ensure-postgres.sh: error: DATABASE_URL does not answer {named}")
    assert "/postgres)" not in line
    assert line.endswith(
        "start that server or correct DATABASE_URL, or unset it to use make's own"
        " ('make db' says which)"
    )
