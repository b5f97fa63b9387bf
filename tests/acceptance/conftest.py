"""Acceptance fixtures: the repo's real supervisord.conf under a real supervisord, real psql.

supervisord runs from the repo root exactly as `make run` and the container run it, with
`.venv/bin` first on PATH so its `python` is the venv's. Its socket and pidfile live in the
checkout's .run/ (supervisord.conf says so), hence one supervisord per checkout at a time:
these tests fail at once, saying so, if another one already listens there.
"""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
import xmlrpc.client
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from uuid import uuid4

import psycopg
import pytest
from psycopg import sql
from supervisor.xmlrpc import SupervisorTransport

from common.supervisor import ctl_credentials
from stripe_standin.process import StandinProcess
from tests import pg

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = ROOT / ".venv" / "bin"
CONF = ROOT / "supervisord.conf"
RUN_DIR = ROOT / ".run"
SOCKET = RUN_DIR / "supervisor.sock"
PIDFILE = RUN_DIR / "supervisord.pid"

API_KEY = "sk_test_acceptance_7Hq2mZ9xKpL4"
# The test server trusts 127.0.0.1, so a password in the URL is accepted and ignored: it is
# there to prove no process ever prints it.
DB_PASSWORD = pg.PASSWORD or "acceptance-db-pw-Zr8Tq"

_SUPERVISORD_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")
LOG_KEYS = frozenset({"ts", "level", "logger", "msg", "pid"})


def worker_stopwaitsecs() -> int:
    """stopwaitsecs of [program:worker]: how long supervisord may take to stop."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(CONF)
    return parser.getint("program:worker", "stopwaitsecs", fallback=10)


def database_url_with_password(dbname: str) -> str:
    return pg.url(dbname, password=DB_PASSWORD)


def base_env() -> dict[str, str]:
    """PATH (venv first, psql's dir kept) and HOME, nothing else inherited."""
    path = os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")])
    return {"PATH": path, "HOME": os.environ.get("HOME", "/root")}


def psql_bin() -> str:
    bindir = os.environ.get("PW_PG_BINDIR")
    if bindir and (Path(bindir) / "psql").exists():
        return str(Path(bindir) / "psql")
    found = shutil.which("psql")
    if not found:
        pytest.fail("psql is not on PATH: run the tests through `make test`")
    return found


def psql(url: str, sql: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    """`psql "$url" -XAtc "$sql"`: unaligned, tuples only, no ~/.psqlrc."""
    return subprocess.run(
        [psql_bin(), url, "-XAtc", sql],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def psql_ok(url: str, sql: str, timeout: float = 30) -> str:
    result = psql(url, sql, timeout)
    assert result.returncode == 0, f"psql failed ({result.returncode}): {result.stderr}"
    return result.stdout.strip()


def payment_sql(amount: int, description: str) -> str:
    return f"SELECT create_payment_intent_sync({amount}, '{description}')"


def pid_alive(pid: int) -> bool:
    """True while `pid` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def rpc(method: str, *args: Any, socket_path: Path = SOCKET) -> Any:
    """Calls `supervisor.METHOD(*args)` over the unix socket of supervisord.conf (or that of
    another checkout's copy of it)."""
    transport = SupervisorTransport(*ctl_credentials(CONF), f"unix://{socket_path}")
    try:
        proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport)
        return getattr(proxy.supervisor, method)(*args)
    finally:
        transport.close()


def socket_in_use() -> bool:
    if not SOCKET.exists():
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1)
        try:
            probe.connect(str(SOCKET))
        except OSError:
            return False  # stale: supervisord removes it on start
    return True


def fail_if_socket_in_use() -> None:
    if socket_in_use():
        try:
            owner = f" (pid {PIDFILE.read_text().strip()})"
        except OSError:
            owner = ""
        pytest.fail(
            f"another supervisord{owner} already listens on {SOCKET}: supervisord.conf puts "
            "its socket in the checkout's .run/, so only one can run per checkout; stop it "
            f"(`{VENV_BIN}/supervisorctl -c supervisord.conf shutdown`) and run again"
        )


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def wait_until(
    condition: Callable[[], Any], timeout: float, message: Callable[[], str] | str
) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(message() if callable(message) else message)
        time.sleep(0.05)


class Supervisord:
    """`supervisord -c supervisord.conf` in the repo root; stdout+stderr appended to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, args: Sequence[str] = ()) -> None:
        self.env = dict(env)
        self.log_path = log_path
        self.args = list(args)
        self.process: subprocess.Popen[bytes] | None = None
        self.returncode: int | None = None
        self.stop_seconds: float | None = None

    # --- lifecycle -----------------------------------------------------------------------

    def start(self, timeout: float = 15) -> Supervisord:
        fail_if_socket_in_use()
        RUN_DIR.mkdir(exist_ok=True)  # as scripts/run.sh does: supervisord needs it to exist
        # Append mode: supervisord and each program reopen /dev/stdout themselves, and only
        # O_APPEND keeps their writes from overwriting each other in a regular file.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "supervisord"), "-c", str(CONF), *self.args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_until(self._answers, timeout, lambda: f"supervisord did not start:\n{self.output()}")
        return self

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            pytest.fail(
                f"supervisord exited with status {self.process.returncode}:\n{self.output()}"
            )
        try:
            return bool(rpc("getState")["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault):
            return False

    def stop(self) -> int:
        """SIGTERM; returns the exit status. Fails if it takes longer than stopwaitsecs."""
        if self.process is None or self.returncode is not None:
            return self.returncode if self.returncode is not None else 0
        limit = worker_stopwaitsecs()
        started = time.monotonic()
        self.process.send_signal(signal.SIGTERM)
        try:
            self.returncode = self.process.wait(limit + 5)
        except subprocess.TimeoutExpired:
            self._kill_everything()
            pytest.fail(f"supervisord did not exit within {limit} s of SIGTERM")
        self.stop_seconds = time.monotonic() - started
        return self.returncode

    def _kill_everything(self) -> None:
        assert self.process is not None
        for info in self.processes():
            if info["pid"]:
                os.killpg(info["pid"], signal.SIGKILL)
        self.process.kill()
        self.returncode = self.process.wait()

    # --- what tests use ------------------------------------------------------------------

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def processes(self) -> list[dict[str, Any]]:
        try:
            infos: list[dict[str, Any]] = rpc("getAllProcessInfo")
        except (OSError, xmlrpc.client.Fault):
            return []
        return infos

    def workers(self, state: str | None = None) -> dict[str, dict[str, Any]]:
        """Worker processes by name (worker-00...), optionally only those in `state`."""
        return {
            p["name"]: p
            for p in self.processes()
            if p["group"] == "worker" and (state is None or p["statename"] == state)
        }

    def wait_workers_running(self, count: int, timeout: float = 20) -> dict[str, dict[str, Any]]:
        """Waits until the scaler has exited and exactly `count` workers are RUNNING and have
        logged "worker started"; returns them."""

        def ready() -> dict[str, dict[str, Any]] | None:
            scaler = [p for p in self.processes() if p["name"] == "worker-scaler"]
            running = self.workers("RUNNING")
            started = {line["pid"] for line in self.json_lines() if line["msg"] == "worker started"}
            if (
                scaler
                and scaler[0]["statename"] == "EXITED"
                and len(running) == count
                and all(p["pid"] in started for p in running.values())
            ):
                return running
            return None

        running = wait_until(
            ready,
            timeout,
            lambda: (
                f"expected {count} RUNNING workers, got "
                f"{sorted(self.workers('RUNNING'))}:\n{self.output()}"
            ),
        )
        assert isinstance(running, dict)
        return running

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`supervisorctl -c supervisord.conf ARGS...`."""
        return subprocess.run(
            [str(VENV_BIN / "supervisorctl"), "-c", str(CONF), *args],
            cwd=ROOT,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def lines(self) -> list[str]:
        return self.output().splitlines()

    def json_lines(self) -> list[dict[str, Any]]:
        """Every line that is a JSON object (the programs' logs)."""
        found = []
        for line in self.lines():
            if line.startswith("{"):
                try:
                    value = json.loads(line)
                except ValueError:
                    continue
                if isinstance(value, dict):
                    found.append(value)
        return found

    def program_lines(self) -> list[str]:
        """Every line not written by supervisord itself: what the programs printed."""
        return [line for line in self.lines() if not _SUPERVISORD_LINE.match(line)]

    def supervisord_lines(self) -> list[str]:
        return [line for line in self.lines() if _SUPERVISORD_LINE.match(line)]


StartSupervisord = Callable[..., Supervisord]


@contextmanager
def login_role(admin_url: str, prefix: str, groups: Sequence[str]) -> Iterator[str]:
    """A LOGIN role that is only a member of `groups`: unique, since roles are cluster-wide.

    Its password is DB_PASSWORD (a trusting server ignores it, others need it). At the end
    its sessions are ended, waited for, and the role dropped - on a new connection, since
    the chaos suite crashes the server in between."""
    login = f"{prefix}_{uuid4().hex[:12]}"
    name = sql.Identifier(login)
    try:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                sql.SQL(
                    "CREATE ROLE {} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD {}"
                ).format(name, sql.Literal(DB_PASSWORD))
            )
            for group in groups:
                admin.execute(sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), name))
        yield login
    finally:
        with psycopg.connect(admin_url, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (login,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(name))


@pytest.fixture
def worker_groups() -> tuple[str, ...]:
    """The groups of the workers' login; a test module may override this fixture (say, to
    add a group of the exporter's own)."""
    return ("payment_worker",)


@pytest.fixture
def worker_login(database_url: str, worker_groups: tuple[str, ...]) -> Iterator[str]:
    """The login supervisord's programs connect as: a member of `worker_groups` only."""
    with login_role(database_url, "pw_accept", worker_groups) as name:
        yield name


@pytest.fixture
def start_supervisord(
    tmp_path: Path, database_url: str, standin: StandinProcess, worker_login: str
) -> Iterator[StartSupervisord]:
    """start_supervisord(env) -> a running Supervisord with exactly `env` (plus base_env(),
    unless bare) and supervisord's command-line `args`.
    On teardown: SIGTERM, and it must exit 0 within stopwaitsecs.

    Depends on the database, the stand-in and the workers' login only so that they are
    torn down after it: workers must not watch their database or role being dropped."""
    started: list[Supervisord] = []

    def start(
        env: Mapping[str, str], *, bare: bool = False, args: Sequence[str] = ()
    ) -> Supervisord:
        full = dict(env) if bare else {**base_env(), **env}
        sup = Supervisord(full, tmp_path / f"supervisord-{len(started)}.log", args)
        started.append(sup)
        return sup.start()

    yield start
    limit = worker_stopwaitsecs()
    for sup in started:
        status = sup.stop()
        assert status == 0, f"supervisord exited {status}:\n{sup.output()[-4000:]}"
        assert sup.stop_seconds is None or sup.stop_seconds <= limit, (
            f"supervisord took {sup.stop_seconds:.1f} s to stop (stopwaitsecs={limit})"
        )


@pytest.fixture
def db_url(database_url: str, pw_database: psycopg.Connection) -> str:
    """This test's database as the admin (the superuser), as a URL with a password in it: for
    psql acting as the RPC's caller and for the tests' own checks."""
    return database_url_with_password(pw_database.info.dbname)


@pytest.fixture
def worker_db_url(pw_database: psycopg.Connection, worker_login: str) -> str:
    """This test's database as the workers' login, password in the URL: supervisord's."""
    return pg.url(pw_database.info.dbname, user=worker_login, password=DB_PASSWORD)


@pytest.fixture
def worker_env(worker_db_url: str, standin: StandinProcess) -> dict[str, str]:
    return {
        "DATABASE_URL": worker_db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "RIVER_WORKER_COUNT": "2",
        # Its own port: another checkout's supervisord may hold the default 9187.
        "METRICS_PORT": str(free_port()),
        "METRICS_HOST": "127.0.0.1",
    }


@pytest.fixture
def supervisor(start_supervisord: StartSupervisord, worker_env: dict[str, str]) -> Supervisord:
    """supervisord with RIVER_WORKER_COUNT=2, both workers RUNNING and listening."""
    sup = start_supervisord(worker_env)
    sup.wait_workers_running(2)
    return sup


def session_roles(admin_url: str) -> dict[str, set[str]]:
    """application_name -> roles, of this database's sessions of our programs (the workers'
    'payment-worker …', the exporter's 'payment-worker metrics')."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT application_name, usename::text FROM pg_stat_activity"
            " WHERE datname = current_database() AND application_name LIKE 'payment-worker%'"
        ).fetchall()
    found: dict[str, set[str]] = {}
    for app, user in rows:
        found.setdefault(app, set()).add(user)
    return found


def role_facts(admin_url: str, role: str) -> tuple[bool, list[str]]:
    """(is a superuser, the roles it is a member of, directly or not)."""
    with psycopg.connect(admin_url, autocommit=True) as admin:
        row = admin.execute(
            "SELECT r.rolsuper, array(SELECT g.rolname::text FROM pg_roles AS g"
            " WHERE g.oid <> r.oid AND pg_has_role(r.oid, g.oid, 'MEMBER') ORDER BY 1)"
            " FROM pg_roles AS r WHERE r.rolname = %s",
            (role,),
        ).fetchone()
    assert row is not None, f"no role {role}"
    return bool(row[0]), list(row[1])
