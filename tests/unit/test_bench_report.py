"""The bench's table judges each target against the right figures: the contention
variant against its own peers, the 0 ms throughput against issue 13's 1.5 times."""

from __future__ import annotations

import os
from typing import Any

from bench import contention, report


def noop_run(system: str, jobs_per_s: float, p50: float, p99: float) -> dict[str, Any]:
    latency = {"n": 300, "p50": p50, "p99": p99}
    return {
        "system": system,
        "label": system,
        "version": "1.0",
        "jobs": 10_000,
        "workers": 2,
        "interval_s": 0.02,
        "throughput": jobs_per_s,
        "worker_cpu_us_per_job": 100.0,
        "db_cpu_us_per_job": 100.0,
        "wakeup_ms": latency,
        "commit_to_start_ms": latency,
        "enqueue_call_ms": latency,
    }


def met(rows: list[tuple[str, str, str, str, str]], section: str, start: str) -> str:
    (row,) = [r for r in rows if r[0] == section and r[1].startswith(start) and "ours" in r[1]]
    return row[4]


def test_the_contended_runs_are_judged_against_the_contended_peers() -> None:
    quiet = {"ours": noop_run("ours", 900, 1.0, 2.0), "pgqueuer": noop_run("pgqueuer", 800, 2, 3)}
    contended = {
        "ours": noop_run("ours", 500, 3.0, 9.0),
        "pgqueuer": noop_run("pgqueuer", 700, 2.0, 4.0),
    }
    rows = report.rows(
        {
            "noop": quiet,
            "noop_contended": contended,
            "contention_load": {"processes": 2, "nice": 19},
        }
    )
    assert met(rows, "5", "No-op") == "yes"
    assert met(rows, "5", "Wake-up") == "yes"
    assert met(rows, "5c", "No-op").startswith("NO: -29 %")
    assert met(rows, "5c", "Wake-up").startswith("NO: p50 +1.0 ms")
    assert any("under contention (2 busy processes at nice 19)" in r[1] for r in rows)


def throughput_run(workers: int, rate: float) -> dict[str, Any]:
    return {
        "latency_ms": 0,
        "workers": workers,
        "rate": rate,
        "sustained": False,
        "memory": {"worker_hwm_max_kb": 50_000},
    }


def test_only_the_two_worker_run_at_0_ms_has_the_throughput_target() -> None:
    rows = report.rows({"throughput": [throughput_run(1, 100), throughput_run(2, 700)]})
    one, two = (r for r in rows if r[1].startswith("Throughput"))
    assert one[3:] == ("-", "-")
    assert two[3] == "≥ 890/s (1.5 times 593)"
    assert two[4] == "NO: -190/s (-21 %)"
    rows = report.rows({"throughput": [throughput_run(2, 900)]})
    assert [r[4] for r in rows if r[1].startswith("Throughput")] == ["yes"]


def test_the_background_load_runs_one_spinner_per_core_and_ends_with_the_block() -> None:
    with contention.background_load() as load:
        assert load == {"processes": os.cpu_count(), "nice": 19}
        spinners = load_children()
        assert len(spinners) == os.cpu_count()
        assert set(spinners.values()) == {19}
    assert not load_children()


def load_children() -> dict[int, int]:
    """pid → nice of this process's living spinner children."""
    found: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if int(fields[1]) == os.getpid() and fields[0] != "Z" and b"os.nice" in cmdline:
            found[int(entry)] = int(fields[16])
    return found
