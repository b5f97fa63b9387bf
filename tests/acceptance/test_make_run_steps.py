"""The documented developer steps as a newcomer types them: `make run` with a key=value
DATABASE_URL and no psql on PATH, `make run` twice, `make stop`, a private cluster that
Ctrl-C stops and a later run does not trade for the server on 5432, `su user -c 'make
run'` in root's terminal, and supervisord run by hand without an activated venv.

The private-cluster and `su` tests work in a copy of the checkout (its own .run/); the `su`
one keeps the throwaway user's venv in .run/su-checkout/.venv between runs (`make clean`
removes it) so that only the first run installs it."""

from __future__ import annotations

import contextlib
import os
import pty
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from uuid import uuid4

import psycopg
import pytest

from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import (
    API_KEY,
    CONF,
    ROOT,
    RUN_DIR,
    VENV_BIN,
    StartSupervisord,
    free_port,
    pid_alive,
    rpc,
    wait_until,
)
from tests.acceptance.test_make_run import run_env
from tests.acceptance.test_make_run_mistakes import make_env

pytestmark = pytest.mark.acceptance

_MAKE_FAILED = re.compile(r"^make: \*\*\* \[.*\] Error", re.M)
_CRIT = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} CRIT ", re.M)


class MakeRun:
    """`make run` (or another target) in the background, in its own process group as a
    terminal's foreground job, its output in a file."""

    def __init__(
        self, env: dict[str, str], log: Path, checkout: Path = ROOT, target: str = "run"
    ) -> None:
        self.log = log
        with log.open("wb") as out:
            self.process = subprocess.Popen(
                ["make", "--no-print-directory", target],
                cwd=checkout,
                env=make_env(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def wait_for(self, text: str, timeout: float = 60) -> str:
        def seen() -> bool:
            if self.process.poll() is not None and text not in self.output():
                pytest.fail(f"make exited {self.process.returncode}:\n{self.output()}")
            return text in self.output()

        wait_until(seen, timeout, lambda: f"never printed {text!r}:\n{self.output()}")
        return self.output()

    def ctrl_c(self, timeout: float = 60) -> None:
        """SIGINT to the job's process group; make itself dies of it once its recipe has
        finished, as at a terminal, so the recipe's own end is read from the output."""
        os.killpg(self.process.pid, signal.SIGINT)
        assert self.process.wait(timeout) in (0, -signal.SIGINT), self.output()
        assert not _MAKE_FAILED.search(self.output()), self.output()

    def kill(self) -> None:
        if self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(60)


def make(
    target: str, env: dict[str, str], checkout: Path = ROOT, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", target],
        cwd=checkout,
        env=make_env(env),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def path_without_psql(tmp: Path) -> str:
    """A PATH with every program of the machine's but psql: an ordinary user's, whose psql
    lives where the scripts find it (.tools/bin, or here the server's bin dir)."""
    farm = tmp / "bin"
    farm.mkdir()
    for directory in ("/usr/local/bin", "/usr/bin", "/bin", "/usr/sbin", "/sbin"):
        if not Path(directory).is_dir():
            continue
        for program in Path(directory).iterdir():
            link = farm / program.name
            if program.name != "psql" and not link.exists() and not link.is_symlink():
                link.symlink_to(program)
    return str(farm)


def pasted(line: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], env=env, capture_output=True, text=True, timeout=60, check=False
    )


@pytest.mark.timeout(150)
def test_keyword_url_and_no_psql_on_path_then_make_run_twice_then_make_stop(
    pw_database: psycopg.Connection, tmp_path: Path
) -> None:
    info = pw_database.info
    conninfo = f"host={info.host} port={info.port} dbname={info.dbname} user={info.user}"
    path = path_without_psql(tmp_path)
    env = {**run_env(conninfo), "PATH": path}
    checkout = stoppable_checkout(tmp_path)
    socket_path = checkout / ".run" / "supervisor.sock"
    first = MakeRun(env, tmp_path / "first.log", checkout)
    lock = checkout / ".run" / "locks" / "run.lock"
    second_env = {**env, "WEBHOOK_PORT": str(free_port()), "METRICS_PORT": str(free_port())}
    try:
        # Twice, while the first still deploys: refused at once, before anything starts.
        holder = wait_until(lambda: run_lock_holder(lock), 60, first.output)
        assert "worker started" not in first.output()
        refused_early(make("run", second_env, checkout), holder)

        text = first.wait_for('"msg": "worker started"')
        assert "Try it" in text
        assert not _CRIT.search(text), text
        if os.geteuid() == 0:
            assert "supervisord: as root, and the programs too" in text
        # The printed line names a psql this shell finds: its full path.
        line = re.search(
            r"^\s*(\S+ -P pager=off \S+ -c .*create_payment_intent_sync.*)$", text, re.M
        )
        assert line, text
        psql_cmd = line.group(1).split()[0]
        assert psql_cmd.startswith("/") and psql_cmd.endswith("/psql"), line.group(1)
        shell = {"PATH": path, "HOME": os.environ.get("HOME", "/")}
        assert pasted("command -v psql", shell).returncode != 0
        done = pasted(line.group(1), shell)
        assert done.returncode == 0, done.stderr
        assert '"status": "pending"' in done.stdout

        # Twice, once it runs: the same.
        supervisord = rpc("getPID", socket_path=socket_path)
        refused_early(make("run", second_env, checkout), int(lock.read_text()))

        standin = re.search(r"stand-in at http://127\.0\.0\.1:\d+ \(pid (\d+)", text)
        assert standin, text
        workers = [p["pid"] for p in rpc("getAllProcessInfo", socket_path=socket_path) if p["pid"]]
        stopped = make("stop", env, checkout)
        assert stopped.returncode == 0, stopped.stderr
        assert stopped.stdout.splitlines()[0] == (
            f"stopped supervisord of this checkout, and its programs (pid {supervisord})"
        )
        assert first.process.wait(60) == 0, first.output()
        for pid in [supervisord, int(standin.group(1)), *workers]:
            assert not pid_alive(pid), f"pid {pid} still runs after make stop"
        assert "stand-in | stopped" in first.output()
        assert make("stop", env, checkout).stdout == "nothing of this checkout was running\n"
    finally:
        first.kill()


def run_lock_holder(lock: Path) -> int | None:
    """The pid in `lock` if it is a live scripts/run.sh (which writes it once it holds the
    lock); an earlier run's pid, left in the file, is not."""
    try:
        pid = int(lock.read_text().strip())
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    return pid if b"scripts/run.sh" in cmdline and pid_alive(pid) else None


def refused_early(second: subprocess.CompletedProcess[str], holder: int) -> None:
    """A second `make run` of a checkout: one line naming the first, nothing started."""
    assert second.returncode != 0
    assert second.stdout == ""
    assert second.stderr.splitlines()[0] == (
        f"make run: error: another make run is starting or running from this checkout "
        f"(pid {holder}); wait for it, or stop it with `make stop`"
    )
    assert "stand-in" not in second.stderr


def stoppable_checkout(tmp_path: Path) -> Path:
    """Where a test may run `make stop`: this checkout, unless this test run's PostgreSQL
    is its private cluster (`make test` on a machine with no server), which `make stop`
    would stop under the tests; then a copy that shares this checkout's venv."""
    if os.environ.get("PW_PG_MODE") != "private":
        return ROOT
    copy = checkout_copy(tmp_path / "checkout")
    (copy / ".venv").symlink_to(ROOT / ".venv")
    return copy


def checkout_copy(dest: Path) -> Path:
    """The checkout's files (tracked and new, not ignored) copied to `dest`, a link as a
    link (supervisord.workers.conf points into the copy's own .run/, as in a fresh clone)."""
    listed = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
        timeout=30,
    ).stdout
    for name in filter(None, listed.decode().split("\0")):
        source = ROOT / name
        if source.is_symlink():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            (dest / name).symlink_to(source.readlink())
        elif source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def own_env(**extra: str) -> dict[str, str]:
    """A shell's environment without the test run's PostgreSQL or make settings."""
    drop = re.compile(r"^(PG|PW_|DATABASE_URL$|STRIPE_|STANDIN_|WEBHOOK_|METRICS_|RIVER_)")
    env = {k: v for k, v in os.environ.items() if not drop.match(k)}
    return {**env, **extra}


def postmaster_pid(checkout: Path) -> int | None:
    try:
        return int((checkout / ".run" / "pgdata" / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@pytest.fixture
def private_checkout() -> Iterator[Path]:
    # Not under pytest's tmp dir (mode 0700): the cluster's owner must reach .run/.
    dest = Path(tempfile.mkdtemp(prefix="pw-private-", dir="/tmp"))
    dest.chmod(0o755)
    checkout_copy(dest)
    (dest / ".venv").symlink_to(ROOT / ".venv")
    yield dest
    make("clean", own_env(), dest)
    shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.timeout(200)
def test_a_private_cluster_is_remembered_stopped_by_ctrl_c_and_by_make_stop(
    private_checkout: Path, tmp_path: Path
) -> None:
    ports = {"STANDIN_PORT": "0", "WEBHOOK_PORT": str(free_port())}
    env = own_env(PW_PG_MODE="private", METRICS_PORT=str(free_port()), **ports)
    run = MakeRun(env, tmp_path / "run.log", private_checkout)
    try:
        text = run.wait_for('"msg": "worker started"', 120)
        found = re.search(
            r"^postgres: the private cluster 127\.0\.0\.1:(\d+) \(PostgreSQL \d+, data in (\S+)\),"
            r" chosen by PW_PG_MODE=private$",
            text,
            re.M,
        )
        assert found, text
        port = found.group(1)
        assert "Ctrl-C stops everything, the private PostgreSQL this run started too" in text
        # The lines to paste name the cluster's port, not 5432.
        line = re.search(
            r"^\s*(psql -P pager=off \S+ -c .*create_payment_intent_sync.*)$", text, re.M
        )
        assert line and f"@127.0.0.1:{port}/payment_worker" in line.group(1), text
        postmaster = postmaster_pid(private_checkout)
        assert postmaster and pid_alive(postmaster)
        run.ctrl_c()
        assert not pid_alive(postmaster), "Ctrl-C left the private cluster running"
        assert "stopped the private cluster" in run.output()
        assert (private_checkout / ".run" / "pgdata" / "PG_VERSION").exists()
    finally:
        run.kill()

    # Remembered: the machine's server on 5432 answers, and still the private cluster.
    plain = own_env(METRICS_PORT=str(free_port()))
    db = make("db", plain, private_checkout)
    assert db.returncode == 0, db.stderr
    assert re.match(
        r"postgres: the private cluster 127\.0\.0\.1:\d+ \(.*\), the choice remembered in"
        r" \.run/pg-choice\n",
        db.stdout,
    ), db.stdout
    assert "PW_PG_MODE=local make db" in db.stdout and "PW_PG_MODE=auto make db" in db.stdout
    postmaster = postmaster_pid(private_checkout)
    assert postmaster and pid_alive(postmaster)
    stop = make("stop", plain, private_checkout)
    assert stop.returncode == 0, stop.stderr
    assert stop.stdout == "stopped the private cluster (.run/pgdata; data kept)\n"
    assert not pid_alive(postmaster)

    # What `make test` does: the cluster started for the command is stopped after it.
    after = subprocess.run(
        [str(private_checkout / "scripts" / "with-env.sh"), "--stop-after", "true"],
        cwd=private_checkout,
        env=plain,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert after.returncode == 0, after.stderr
    assert "stopped the private cluster" in after.stderr
    postmaster = postmaster_pid(private_checkout)
    assert postmaster is None or not pid_alive(postmaster)


# --- su in root's terminal -----------------------------------------------------------------

SU_CHECKOUT = RUN_DIR / "su-checkout"
# The user may run the machine's python, not necessarily the one of root's .venv.
SYSTEM_PYTHON = "/usr/bin/python3"


def user_pids(uid: int) -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid and pid_alive(int(entry.name)):
                    found.add(int(entry.name))
            except OSError:
                continue
    return found


@pytest.fixture
def throwaway_user() -> Iterator[tuple[str, int]]:
    if os.geteuid() != 0:
        pytest.skip("needs root: creates a throwaway user to run `su user -c 'make run'`")
    version = "import sys; sys.exit(sys.version_info < (3, 11))"
    if (
        not Path(SYSTEM_PYTHON).exists()
        or subprocess.run([SYSTEM_PYTHON, "-c", version], check=False, timeout=30).returncode
    ):
        pytest.skip(f"no {SYSTEM_PYTHON} >= 3.11 for the throwaway user's venv")
    name = f"pwsu{uuid4().hex[:8]}"
    subprocess.run(
        ["useradd", "--create-home", "--shell", "/bin/bash", name],
        check=True,
        capture_output=True,
        timeout=30,
    )
    uid = int(subprocess.run(["id", "-u", name], capture_output=True, check=True, text=True).stdout)
    try:
        yield name, uid
    finally:
        for pid in user_pids(uid):  # only if the test failed half-way: ours, by pid
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        subprocess.run(["userdel", "--remove", name], capture_output=True, timeout=30, check=False)


@pytest.fixture
def su_checkout(throwaway_user: tuple[str, int]) -> Path:
    """A copy of the checkout owned by the user; its .venv root's, built with the system
    python (the user may not run root's interpreter) and kept between runs."""
    name, _ = throwaway_user
    SU_CHECKOUT.mkdir(parents=True, exist_ok=True)
    for child in SU_CHECKOUT.iterdir():
        if child.name == ".venv":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()
    checkout_copy(SU_CHECKOUT)
    venv = subprocess.run(
        [str(SU_CHECKOUT / "scripts" / "ensure-venv.sh")],
        env={**own_env(), "PYTHON": SYSTEM_PYTHON},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert venv.returncode == 0, venv.stderr
    shutil.rmtree(SU_CHECKOUT / ".run", ignore_errors=True)
    user = pwd.getpwnam(name)
    for top, dirs, files in os.walk(SU_CHECKOUT):
        if top == str(SU_CHECKOUT):
            dirs.remove(".venv")  # root's, read-only to the user
        for entry in [top, *(os.path.join(top, f) for f in files)]:
            os.chown(entry, user.pw_uid, user.pw_gid, follow_symlinks=False)
    return SU_CHECKOUT


class PtyReader:
    """Everything written to a pty's master, collected by a thread until EOF."""

    def __init__(self, master: int) -> None:
        self.master = master
        self.data = b""
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = os.read(self.master, 65536)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def text(self) -> str:
        return self.data.decode(errors="replace")


@pytest.mark.timeout(400)
def test_su_user_make_run_in_roots_terminal(
    throwaway_user: tuple[str, int], su_checkout: Path, pw_database: psycopg.Connection
) -> None:
    name, uid = throwaway_user
    info = pw_database.info
    settings = (
        f"DATABASE_URL=postgresql://{info.user}@{info.host}:{info.port}/{info.dbname}"
        f" PW_PG_MODE=url STANDIN_PORT=0 WEBHOOK_PORT={free_port()} METRICS_PORT={free_port()}"
    )
    master, slave = pty.openpty()
    # The terminal is root's, as when root types `su user -c 'make run'`.
    assert os.stat(os.ttyname(slave)).st_uid == 0
    su = subprocess.Popen(
        # setsid -c: a new session whose controlling terminal is the pty, as a login's.
        ["setsid", "-c", "su", name, "-c", f"cd {su_checkout} && {settings} make run"],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=own_env(PATH="/usr/local/bin:/usr/bin:/bin"),
    )
    os.close(slave)
    reader = PtyReader(master)
    try:
        wait_until(
            lambda: '"msg": "worker started"' in reader.text() or su.poll() is not None,
            120,
            lambda: f"no worker started:\n{reader.text()}",
        )
        text = reader.text()
        assert '"msg": "worker started"' in text, text
        assert "PermissionError" not in text and "Traceback" not in text, text
        assert not _CRIT.search(text), text
        assert "Try it" in text
        socket_path = su_checkout / ".run" / "supervisor.sock"
        supervisord = rpc("getPID", socket_path=socket_path)
        assert os.stat(f"/proc/{supervisord}").st_uid == uid

        os.write(master, b"\x03")  # Ctrl-C on root's terminal
        wait_until(
            lambda: not user_pids(uid),
            90,
            lambda: f"still running: {user_pids(uid)}\n{reader.text()}",
        )
        su.wait(30)  # su itself ends at Ctrl-C; make run stops behind it
        final = reader.text()
        assert "stopped: worker-00 (exit status 0)" in final, final
        assert "stand-in | stopped" in final, final
    finally:
        if su.poll() is None:
            su.kill()
            su.wait(30)
        os.close(master)
        reader.thread.join(10)


# --- Running it yourself ---------------------------------------------------------------------


def test_supervisord_by_hand_needs_no_activated_venv_and_logs_no_crit(
    start_supervisord: StartSupervisord, worker_db_url: str, standin: StandinProcess
) -> None:
    env = {
        "DATABASE_URL": worker_db_url,
        "STRIPE_API_KEY": API_KEY,
        "STRIPE_API_BASE": standin.url,
        "METRICS_PORT": str(free_port()),
        # No .venv/bin: `.venv/bin/supervisord -c supervisord.conf` from a plain shell.
        "PATH": "/usr/local/bin:/usr/bin:/bin",
        "HOME": os.environ.get("HOME", "/"),
    }
    assert str(VENV_BIN) not in env["PATH"]
    # As root, as the README says: -u root, or supervisord warns that it kept root.
    args = ["-u", "root"] if os.geteuid() == 0 else []
    sup = start_supervisord(env, bare=True, args=args)
    running = sup.wait_workers_running(1)
    worker = os.readlink(f"/proc/{running['worker-00']['pid']}/exe")
    assert Path(worker).resolve() == (VENV_BIN / "python").resolve()
    assert [line for line in sup.supervisord_lines() if " CRIT " in line] == []
    # supervisorctl from a plain shell, with the socket's credentials from the file.
    status = subprocess.run(
        [str(VENV_BIN / "supervisorctl"), "-c", str(CONF), "status", "worker:worker-00"],
        env={"PATH": env["PATH"]},
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert re.match(r"worker:worker-00\s+RUNNING", status.stdout), status
