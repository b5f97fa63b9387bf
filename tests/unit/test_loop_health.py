"""Per-loop heartbeats, as workers write them and as /healthz reads them."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from metrics.collectors import stalled_loops
from metrics.reaper import handle

ROOT = Path(__file__).resolve().parents[2]

# A worker process whose leadership loop stopped going round 100 s ago, whose cleaner
# ended with the stop (0), and whose other loops beat just now.
RECORD = """
import time
from worker import telemetry
for loop in ("producer", "listener", "scheduler", "rescuer"):
    telemetry.loop_beat(loop)
telemetry.LOOP_HEARTBEAT.labels("leadership").set(time.time() - 100)
telemetry.loop_ended("cleaner")
print(__import__("os").getpid())
"""


def run_worker_like(directory: Path, code: str = RECORD) -> int:
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory), "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return int(out.stdout.strip())


def test_the_stalled_loop_of_a_live_worker_is_named(tmp_path: Path) -> None:
    pid = run_worker_like(tmp_path)
    [stalled] = stalled_loops(tmp_path, 30.0, time.time())
    assert (stalled.pid, stalled.loop) == (str(pid), "leadership")
    assert 99 < stalled.age_seconds < 110
    assert (
        str(stalled) == f"worker pid {pid}: leadership loop silent for {stalled.age_seconds:.0f} s"
    )
    # Within a longer allowance nothing is stalled; an ended loop never is.
    assert stalled_loops(tmp_path, 200.0, time.time()) == []
    later = stalled_loops(tmp_path, 30.0, time.time() + 10_000)
    assert [(s.pid, s.loop) for s in later] == [
        (str(pid), loop) for loop in ("leadership", "listener", "producer", "rescuer", "scheduler")
    ]


def test_a_dead_workers_loops_are_forgotten_once_reaped(tmp_path: Path) -> None:
    pid = run_worker_like(tmp_path)
    payload = f"processname:worker-00 groupname:worker from_state:RUNNING expected:0 pid:{pid}"
    assert handle("PROCESS_STATE_EXITED", payload, tmp_path) == pid
    assert stalled_loops(tmp_path, 30.0, time.time()) == []


def test_no_multiprocess_directory_means_nothing_to_report() -> None:
    assert stalled_loops(None, 30.0, time.time()) == []
