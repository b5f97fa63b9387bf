"""The exporter's view of the workers' multiprocess files, and the reaper that tidies them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from metrics.collectors import build_registry, latest_heartbeat
from metrics.database import DatabaseReader
from metrics.reaper import handle

ROOT = Path(__file__).resolve().parents[2]

# A worker process's metrics, written the way worker/telemetry.py writes them.
RECORD = """
from worker import telemetry
telemetry.WORKERS_UP.set(1)
telemetry.beat()
telemetry.JOBS_FINISHED.labels("create_payment_intent", "completed").inc(3)
print(__import__("os").getpid())
"""


def run_worker_like(directory: Path) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", RECORD], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def sample(directory: Path, name: str) -> float | None:
    registry = build_registry(DatabaseReader("host=127.0.0.1 port=1"), directory)
    value: float | None = registry.get_sample_value(name)
    return value


@pytest.fixture
def metrics_dir(tmp_path: Path) -> Path:
    return tmp_path


def test_live_workers_are_summed_and_counters_kept_after_death(metrics_dir: Path) -> None:
    first, second = run_worker_like(metrics_dir), run_worker_like(metrics_dir)
    assert sample(metrics_dir, "payment_worker_workers_up") == 2
    total = "payment_worker_jobs_finished_total"
    labels = {"kind": "create_payment_intent", "outcome": "completed"}
    registry = build_registry(DatabaseReader("host=127.0.0.1 port=1"), metrics_dir)
    assert registry.get_sample_value(total, labels) == 6

    payload = f"processname:worker-00 groupname:worker from_state:RUNNING expected:0 pid:{first}"
    assert handle("PROCESS_STATE_EXITED", payload, metrics_dir) == first

    assert sample(metrics_dir, "payment_worker_workers_up") == 1
    registry = build_registry(DatabaseReader("host=127.0.0.1 port=1"), metrics_dir)
    assert registry.get_sample_value(total, labels) == 6, "a dead worker's counts stay"
    stopped = f"processname:worker-01 groupname:worker from_state:STOPPING pid:{second}"
    assert handle("PROCESS_STATE_STOPPED", stopped, metrics_dir) == second
    assert sample(metrics_dir, "payment_worker_workers_up") in (None, 0)
    assert latest_heartbeat(metrics_dir) is None


def test_events_of_other_programs_are_ignored(metrics_dir: Path) -> None:
    pid = run_worker_like(metrics_dir)
    other = f"processname:metrics groupname:metrics from_state:RUNNING expected:0 pid:{pid}"
    assert handle("PROCESS_STATE_EXITED", other, metrics_dir) is None
    running = f"processname:worker-00 groupname:worker from_state:STARTING pid:{pid}"
    assert handle("PROCESS_STATE_RUNNING", running, metrics_dir) is None
    assert sample(metrics_dir, "payment_worker_workers_up") == 1


def test_heartbeat_is_the_newest_of_the_live_workers(metrics_dir: Path) -> None:
    assert latest_heartbeat(metrics_dir) is None
    run_worker_like(metrics_dir)
    beat = latest_heartbeat(metrics_dir)
    assert beat is not None
    assert 0 <= time.time() - beat < 30
