"""A private PostgreSQL cluster for the chaos suite, which crashes and restarts it mid-run,
so it must never be the shared test server.

initdb into a fresh directory under the system temp dir (trust auth, TCP on 127.0.0.1 at a
free port, unix socket in the same directory), PostgreSQL's durability defaults kept. As
root, every server program runs as the system user payment-worker-pg through `runuser`,
exactly as scripts/pg-private.sh does it: PostgreSQL refuses to run as root.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import quote

import psycopg
from psycopg import sql

from tests import pg

PG_OS_USER = "payment-worker-pg"  # the name scripts/pg-private.sh uses
DEFAULT_BINDIR = "/usr/lib/postgresql/15/bin"


def server_bindir() -> Path:
    """$PW_PG_BINDIR (exported by `make test`) if it has pg_ctl, else PostgreSQL 15's."""
    bindir = os.environ.get("PW_PG_BINDIR")
    if bindir and (Path(bindir) / "pg_ctl").exists():
        return Path(bindir)
    return Path(DEFAULT_BINDIR)


def is_root() -> bool:
    return os.geteuid() == 0


def ensure_pg_os_user() -> None:
    """Creates the system user the cluster runs as (root only), as scripts/pg-private.sh."""
    known = subprocess.run(["getent", "passwd", PG_OS_USER], capture_output=True, check=False)
    if known.returncode == 0:
        return
    result = subprocess.run(
        [
            "useradd",
            "--system",
            "--user-group",
            "--no-create-home",
            "--home-dir",
            "/nonexistent",
            "--shell",
            "/usr/sbin/nologin",
            PG_OS_USER,
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    # A concurrent run may have created it meanwhile (useradd exits 9: already exists).
    if result.returncode not in (0, 9):
        raise RuntimeError(f"useradd {PG_OS_USER} failed: {result.stderr.strip()}")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class PrivateCluster:
    """initdb + pg_ctl in a temp dir; `restart()` crashes the server and brings it back."""

    def __init__(
        self,
        bindir: Path | None = None,
        *,
        settings: dict[str, str] | None = None,
        hba: list[str] | None = None,
    ) -> None:
        """`settings`: extra server settings (-c name=value); `hba`: pg_hba.conf's lines
        instead of initdb's trust-everything."""
        self.settings = dict(settings or {})
        self.hba = hba
        self.bindir = bindir or server_bindir()
        self.base = Path(tempfile.mkdtemp(prefix="pw-chaos-pg-"))
        self.data = self.base / "data"
        self.log = self.base / "postgres.log"
        self.port = free_port()
        self.user = "postgres"
        self.restarts = 0
        self.running = False

    # --- lifecycle -----------------------------------------------------------------------

    def start(self) -> PrivateCluster:
        # The temp dir is the socket dir too: mode 700, owned by whoever runs the server.
        if is_root():
            ensure_pg_os_user()
            shutil.chown(self.base, PG_OS_USER, PG_OS_USER)
        self.log.touch()
        if is_root():
            shutil.chown(self.log, PG_OS_USER, PG_OS_USER)
        self._run(
            "initdb",
            "-D",
            str(self.data),
            "-U",
            self.user,
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C",
            "--no-instructions",
        )
        if self.hba is not None:
            hba_file = self.data / "pg_hba.conf"
            hba_file.write_text("\n".join(self.hba) + "\n")
            if is_root():
                shutil.chown(hba_file, PG_OS_USER, PG_OS_USER)
        self._run("pg_ctl", "start", *self._ctl_args(), "-w", "-t", "60")
        self.running = True
        self.wait_accepting(timeout=30)
        return self

    def restart(self, mode: str = "immediate") -> float:
        """`pg_ctl restart -m MODE` (immediate: a crash, then crash recovery at start).

        Returns the time.time() at which the server accepted a connection again: pg_ctl
        does not wait for the start (-W), this polls every 10 ms instead, for precision."""
        self._run("pg_ctl", "restart", "-m", mode, *self._ctl_args(), "-W")
        self.restarts += 1
        return self.wait_accepting(timeout=60)

    def stop(self) -> None:
        if not self.running:
            return
        try:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w", "-t", "30")
        except RuntimeError:
            self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "immediate", "-w", "-t", "30")
        self.running = False

    def remove(self) -> None:
        self.stop()
        shutil.rmtree(self.base, ignore_errors=True)

    def wait_accepting(self, timeout: float) -> float:
        deadline = time.monotonic() + timeout
        while True:
            try:
                with psycopg.connect(self.url("postgres"), connect_timeout=2):
                    return time.time()
            except psycopg.OperationalError as exc:
                if time.monotonic() > deadline:
                    raise RuntimeError(
                        f"the private cluster did not accept connections within {timeout} s: "
                        f"{exc}\n{self.log_tail()}"
                    ) from exc
            time.sleep(0.01)

    # --- databases -----------------------------------------------------------------------

    def url(self, dbname: str, user: str | None = None) -> str:
        """As the cluster's superuser unless `user` is given (trust: no password needed)."""
        who = quote(user or self.user, safe="")
        return f"postgresql://{who}@127.0.0.1:{self.port}/{quote(dbname, safe='')}"

    def create_database(self, name: str) -> str:
        """CREATE DATABASE name, schema deployed by real sqitch; returns its URL."""
        with psycopg.connect(self.url("postgres"), autocommit=True) as admin:
            admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        sqitch_deploy(self.url(name))
        return self.url(name)

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    # --- internals -----------------------------------------------------------------------

    def _ctl_args(self) -> list[str]:
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.base}"
        )
        options += "".join(f" -c {name}={value}" for name, value in self.settings.items())
        return ["-D", str(self.data), "-l", str(self.log), "-o", options]

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if is_root():
            command = ["runuser", "-u", PG_OS_USER, "--", *command]
        # Output to a file, not a pipe: the postmaster pg_ctl starts must not hold our pipe.
        with tempfile.TemporaryFile() as out:
            result = subprocess.run(
                command,
                cwd=self.base,
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=120,
                check=False,
            )
            if result.returncode != 0:
                out.seek(0)
                output = out.read().decode(errors="replace")
                raise RuntimeError(
                    f"{program} {args[0]} failed ({result.returncode}):\n{output}\n"
                    f"postgres.log:\n{self.log_tail()}"
                )


def sqitch_deploy(url: str, *args: str) -> None:
    """`sqitch --chdir schema deploy [ARGS] db:pg://...`, against an explicit target (not
    PGHOST)."""
    target = "db:" + url.replace("postgresql://", "pg://", 1)
    result = subprocess.run(
        [pg.sqitch_bin(), "--chdir", str(pg.SCHEMA_DIR), "deploy", *args, target],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env={**os.environ, "SQITCH_USER_CONFIG": os.devnull, "SQITCH_SYSTEM_CONFIG": os.devnull},
    )
    if result.returncode != 0:
        raise RuntimeError(f"sqitch deploy failed:\n{result.stdout}\n{result.stderr}")
