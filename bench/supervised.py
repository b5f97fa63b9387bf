"""The real supervisord with the repo's supervisord.conf, for the end-to-end runs.

supervisord.conf puts its control socket, pidfile and metrics directory in the
checkout's .run/, so only one supervisord can run per checkout - and other engineers' test runs
(`make test`) start theirs there. The benchmark therefore runs a copy of the file in a
temporary directory in which exactly those three paths are moved there; every program
section, command, directory and setting is the repo's own, unchanged. (If the repo's
supervisord is running, it is left alone, and nothing of ours can collide with it.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time
import xmlrpc.client
from pathlib import Path
from typing import Any

from common.supervisor import ctl_credentials
from supervisor.xmlrpc import SupervisorTransport

from bench.common import ROOT, free_port, proc_status_kb, wait_for

VENV_BIN = ROOT / ".venv" / "bin"
CONF = ROOT / "supervisord.conf"

# (what the repo's file says, where the benchmark's copy puts it)
_MOVED = (
    ("%(here)s/.run/supervisor.sock", "{tmp}/supervisor.sock"),
    ("%(here)s/.run/supervisord.pid", "{tmp}/supervisord.pid"),
    ("%(here)s/.run/metrics", "{tmp}/metrics"),
    # worker-scaler's RIVER_WORKER_COUNT, and the include that reads it (no link needed:
    # supervisord only warns that it is not there yet).
    ("%(here)s/.run/workers.conf", "{tmp}/workers.conf"),
    ("%(here)s/supervisord.workers.conf", "{tmp}/workers.conf"),
)


def bench_config(tmp: Path) -> str:
    """supervisord.conf with its socket, pidfile and metrics dir moved into `tmp`."""
    text = CONF.read_text()
    for original, moved in _MOVED:
        if original not in text:
            raise RuntimeError(f"supervisord.conf no longer mentions {original}: update bench/")
        text = text.replace(original, moved.format(tmp=tmp))
    # Everything else that was relative to the file stays relative to the repo.
    return text.replace("%(here)s", str(ROOT))


class BenchSupervisord:
    def __init__(self, env: dict[str, str], logdir: Path) -> None:
        """`logdir` keeps the config and the log; the socket, pidfile and metrics live in
        a short temporary path (a unix socket's path is limited to 107 bytes)."""
        logdir.mkdir(parents=True, exist_ok=True)
        self.tmp = Path(tempfile.mkdtemp(prefix="pwb-"))
        self.conf = logdir / "supervisord.conf"
        self.conf.write_text(bench_config(self.tmp))
        self.socket = self.tmp / "supervisor.sock"
        self.log_path = logdir / "supervisord.log"
        self.env = {
            "PATH": os.pathsep.join([str(VENV_BIN), os.environ.get("PATH", "/usr/bin:/bin")]),
            "HOME": os.environ.get("HOME", "/root"),
            # Not the exporter's default port: a test run's exporter may hold it.
            "METRICS_PORT": str(free_port()),
            "METRICS_HOST": "127.0.0.1",
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> BenchSupervisord:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [str(VENV_BIN / "supervisord"), "-c", str(self.conf)],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        wait_for(self._answers, 20, "supervisord to answer", 0.05)
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def rpc(self, method: str, *args: Any) -> Any:
        transport = SupervisorTransport(*ctl_credentials(self.conf), f"unix://{self.socket}")
        try:
            proxy = xmlrpc.client.ServerProxy("http://127.0.0.1", transport)
            return getattr(proxy.supervisor, method)(*args)
        finally:
            transport.close()

    def _answers(self) -> bool:
        assert self.process is not None
        if self.process.poll() is not None:
            raise RuntimeError(f"supervisord exited:\n{self.output()[-3000:]}")
        try:
            return bool(self.rpc("getState")["statename"] == "RUNNING")
        except (OSError, xmlrpc.client.Fault):
            return False

    def output(self) -> str:
        return self.log_path.read_text(errors="replace")

    def processes(self) -> list[dict[str, Any]]:
        infos: list[dict[str, Any]] = self.rpc("getAllProcessInfo")
        return infos

    def worker_pids(self) -> list[int]:
        return [
            p["pid"]
            for p in self.processes()
            if p["group"] == "worker" and p["statename"] == "RUNNING"
        ]

    def started_pids(self) -> set[int]:
        """Pids that logged "worker started" (listening, ready to claim)."""
        pids = set()
        for line in self.output().splitlines():
            if line.startswith("{") and '"worker started"' in line:
                try:
                    pids.add(int(json.loads(line)["pid"]))
                except (ValueError, KeyError):
                    continue
        return pids

    def wait_workers(self, count: int, timeout: float = 60) -> list[int]:
        def ready() -> list[int] | None:
            pids = self.worker_pids()
            if len(pids) == count and set(pids) <= self.started_pids():
                return pids
            return None

        try:
            pids: list[int] = wait_for(ready, timeout, f"{count} workers to start", 0.1)
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}:\n{self.output()[-4000:]}") from None
        # Their LISTEN connections are opened right after "worker started".
        time.sleep(0.5)
        return pids

    def memory(self) -> dict[str, Any]:
        """VmHWM (peak RSS) and VmRSS in kB of every process supervisord runs, and its own."""
        assert self.process is not None
        rows = [{"name": "supervisord", "pid": self.process.pid}]
        rows += [
            {"name": p["name"], "pid": p["pid"]}
            for p in self.processes()
            if p["pid"] and p["statename"] == "RUNNING"
        ]
        for row in rows:
            row["hwm_kb"] = proc_status_kb(row["pid"], "VmHWM")
            row["rss_kb"] = proc_status_kb(row["pid"], "VmRSS")
        workers = [r for r in rows if r["name"].startswith("worker-") and r["hwm_kb"]]
        return {
            "processes": rows,
            "worker_hwm_max_kb": max((r["hwm_kb"] for r in workers), default=0),
            "worker_hwm_total_kb": sum(r["hwm_kb"] for r in workers),
            "all_hwm_total_kb": sum(r["hwm_kb"] or 0 for r in rows),
        }

    def stop(self, timeout: float = 60) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        shutil.rmtree(self.tmp, ignore_errors=True)

    def error_lines(self) -> list[str]:
        """Log lines at WARNING or above: a benchmark run should have none."""
        found = []
        for line in self.output().splitlines():
            if re.search(r'"level": ?"(WARNING|ERROR|CRITICAL)"', line):
                found.append(line)
        return found
