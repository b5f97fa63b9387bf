"""Small helpers shared by every part of the benchmark; stdlib and psycopg only, so the
peers' venv (bench/.venv-peers) can import this module too."""

from __future__ import annotations

import math
import os
import socket
import statistics
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "bench"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of `values`; NaN when empty."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100 * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


def summary_ms(seconds: Sequence[float]) -> dict[str, Any]:
    """p50/p95/p99/max/mean in milliseconds of a list of durations in seconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50": percentile(ms, 50),
        "p95": percentile(ms, 95),
        "p99": percentile(ms, 99),
        "max": max(ms) if ms else math.nan,
        "min": min(ms) if ms else math.nan,
        "mean": statistics.fmean(ms) if ms else math.nan,
    }


def admin_url() -> str:
    """The maintenance URL `scripts/with-env.sh` exports (database `postgres`)."""
    url = os.environ.get("PW_ADMIN_URL")
    if not url:
        raise SystemExit("PW_ADMIN_URL is not set: run the benchmark with `make bench`")
    return url


def database_url(dbname: str, base: str | None = None) -> str:
    """`base` (the admin URL by default) with its database replaced by `dbname`."""
    parts = urlsplit(base or admin_url())
    return urlunsplit(parts._replace(path="/" + quote(dbname, safe="")))


def as_login(url: str, user: str, password: str) -> str:
    """`url` with its user and password replaced (both URL-encoded)."""
    parts = urlsplit(url)
    server = parts.netloc.rsplit("@", 1)[-1]
    auth = f"{quote(user, safe='')}:{quote(password, safe='')}"
    return urlunsplit(parts._replace(netloc=f"{auth}@{server}"))


def webhook_env(
    worker_dsn: str, webhook_dsn: str, standin_url: str, *, secret: str, port: int, workers: int
) -> dict[str, str]:
    """supervisord's environment for a run with the receiver and a webhook-delivering
    stand-in: reconciliation out of the way, so every change arrives through an event."""
    return {
        "DATABASE_URL": worker_dsn,
        "WEBHOOK_DATABASE_URL": webhook_dsn,
        "STRIPE_API_KEY": "sk_test_payment_worker_bench",
        "STRIPE_API_BASE": standin_url,
        "STRIPE_WEBHOOK_SECRET": secret,
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
        "RIVER_WORKER_COUNT": str(workers),
        "RECONCILE_AFTER": "3600",
    }


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def proc_status_kb(pid: int, field: str) -> int | None:
    """A `kB` field (VmHWM, VmRSS) of /proc/PID/status, or None if the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def process_cpu_seconds(pid: int) -> float | None:
    """utime + stime of a process, in seconds (None if it is gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# Every other server process connected to the database the query runs in.
OTHER_BACKENDS = (
    "SELECT pid FROM pg_stat_activity "
    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
)


def cpu_seconds_of(pids: Iterable[int]) -> dict[int, float]:
    """pid → CPU seconds so far, of those of `pids` still alive."""
    found = {pid: process_cpu_seconds(pid) for pid in pids}
    return {pid: s for pid, s in found.items() if s is not None}


def machine_cpu() -> tuple[float, float]:
    """(busy, total) jiffies of the whole machine since boot, from /proc/stat."""
    values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = values[3] + values[4]  # idle + iowait
    total = sum(values[:8])
    return total - idle, total


def busy_fraction(before: tuple[float, float], after: tuple[float, float]) -> float:
    """The share of the machine's CPU time (all cores) that was busy between two samples."""
    total = after[1] - before[1]
    return (after[0] - before[0]) / total if total else 0.0


def wait_for(condition: Any, timeout: float, what: str, interval: float = 0.02) -> Any:
    """Polls `condition()` until it returns something true; raises TimeoutError after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(interval)
