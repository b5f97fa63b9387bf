"""No-op jobs through one queue system: throughput of pre-inserted jobs, then wake-up latency.

    python -m bench.noop run --system ours|procrastinate|pgqueuer --dsn URL --out FILE
    python -m bench.noop worker --system ... --dsn URL --records FILE --ready FILE

`run` drives one fresh, empty database:
  1. installs the system's schema (ours: the database is a clone of the sqitch-deployed one)
     and inserts --jobs no-op jobs in one statement, through the system's own API;
  2. starts --workers worker processes (`worker` below) and waits until each has imported
     and built everything; then tells them all to start at the same instant (t_go);
  3. polls the database until every job's completion has committed: a job counts as done
     only when the database says so, never when the handler returns;
     throughput = jobs / (that moment - t_go);
  4. with the same workers running, enqueues --latency-jobs jobs --interval s apart, one
     call each; t0 is taken just before the enqueue call and travels in the job's args,
     t_commit just after the call returns (its transaction committed). The job's handler
     takes time.monotonic() on its first line (CLOCK_MONOTONIC: one clock for every
     process of the machine). wake-up = start - t0; commit->start = start - t_commit.
  5. SIGTERMs the workers (each writes what its handler recorded) and writes a JSON summary.

The same driver runs every system; it only needs psycopg and the system's package, so it
runs from the main venv for ours and from bench/.venv-peers for the peers."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psycopg

from bench import profile
from bench.common import (
    OTHER_BACKENDS,
    ROOT,
    busy_fraction,
    cpu_seconds_of,
    machine_cpu,
    proc_status_kb,
    process_cpu_seconds,
    summary_ms,
    wait_for,
)

# What a handler records on its first line: (job number, t0 or None, monotonic start).
Record = tuple[int, float | None, float]


def load_system(name: str) -> Any:
    if name == "ours":
        from bench.noop_ours import Ours

        return Ours()
    from bench import noop_peers

    return noop_peers.SYSTEMS[name]()


# --- worker process -----------------------------------------------------------------------


def worker_main(args: argparse.Namespace) -> int:
    system = load_system(args.system)
    records: list[Record] = []
    ready_path = Path(args.ready)

    def ready_then_wait_for_go() -> None:
        ready_path.write_text(str(os.getpid()))
        if sys.stdin.readline().strip() != "go":
            raise SystemExit("no go: the driver went away")

    try:
        system.worker(args.dsn, args.concurrency, records, ready_then_wait_for_go)
    finally:
        Path(args.records).write_text(json.dumps(records))
    return 0


# --- driver -------------------------------------------------------------------------------


async def remaining(conn: psycopg.AsyncConnection[Any], sql: str) -> int:
    cur = await conn.execute(sql)
    row = await cur.fetchone()
    return int(row[0]) if row else 0


async def wait_done(
    conn: psycopg.AsyncConnection[Any],
    sql: str,
    timeout: float,
    interval: float,
    workers: list[dict[str, Any]],
) -> float:
    """Polls until no job is left undone; returns the monotonic time it saw that."""
    deadline = time.monotonic() + timeout
    while True:
        left = await remaining(conn, sql)
        now = time.monotonic()
        if left == 0:
            return now
        if now > deadline:
            raise RuntimeError(
                f"{left} jobs still not done after {timeout:g} s\n{worker_log_tail(workers)}"
            )
        if any(w["process"].poll() is not None for w in workers):
            raise RuntimeError(
                f"a worker exited with {left} jobs left:\n{worker_log_tail(workers)}"
            )
        await asyncio.sleep(interval)


async def backend_cpu(conn: psycopg.AsyncConnection[Any]) -> dict[int, float]:
    """CPU seconds so far of every other server process connected to this database."""
    cur = await conn.execute(OTHER_BACKENDS)
    return cpu_seconds_of(pid for (pid,) in await cur.fetchall())


def start_workers(args: argparse.Namespace, workdir: Path) -> list[dict[str, Any]]:
    workers = []
    env = {**os.environ, "PYTHONPATH": str(ROOT), "PYTHONUNBUFFERED": "1"}
    if args.system == "ours":
        # As under supervisord: metrics are written to per-process files.
        metrics = workdir / "metrics"
        metrics.mkdir(exist_ok=True)
        env["PROMETHEUS_MULTIPROC_DIR"] = str(metrics)
    for i in range(args.workers):
        paths = {k: workdir / f"worker-{i}.{k}" for k in ("records", "ready", "log")}
        with paths["log"].open("wb") as log:
            process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "bench.noop",
                    "worker",
                    "--system",
                    args.system,
                    "--dsn",
                    args.dsn,
                    "--concurrency",
                    str(args.concurrency),
                    "--records",
                    str(paths["records"]),
                    "--ready",
                    str(paths["ready"]),
                ],
                cwd=ROOT,
                env=env,
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        workers.append({"process": process, **paths})
    return workers


def stop_workers(workers: list[dict[str, Any]], timeout: float = 30) -> None:
    for w in workers:
        if w["process"].poll() is None:
            w["process"].send_signal(signal.SIGTERM)
    for w in workers:
        try:
            w["process"].wait(timeout)
        except subprocess.TimeoutExpired:
            w["process"].kill()
            w["process"].wait()


def worker_log_tail(workers: list[dict[str, Any]]) -> str:
    return "\n".join(
        f"--- {w['log'].name}\n" + w["log"].read_text(errors="replace")[-2000:] for w in workers
    )


async def drive(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    system = load_system(args.system)
    result: dict[str, Any] = {
        "system": args.system,
        "label": system.label,
        "version": system.version(),
        "workers": args.workers,
        "concurrency": args.concurrency,
        "jobs": args.jobs,
        "latency_jobs": args.latency_jobs,
        "interval_s": args.interval,
    }
    await system.setup(args.dsn)
    started = time.monotonic()
    await system.bulk_insert(args.dsn, args.jobs)
    result["bulk_insert_s"] = time.monotonic() - started
    if hasattr(system, "claim_plan"):
        result["claim_plan"] = system.claim_plan(args.dsn)

    workers = start_workers(args, workdir)
    try:
        try:
            wait_for(
                lambda: all(
                    w["ready"].exists() or w["process"].poll() is not None for w in workers
                ),
                60,
                "the workers to be ready",
            )
        except TimeoutError as exc:
            raise RuntimeError(f"{exc}\n{worker_log_tail(workers)}") from None
        if any(w["process"].poll() is not None for w in workers):
            raise RuntimeError("a worker exited before starting:\n" + worker_log_tail(workers))

        async with await psycopg.AsyncConnection.connect(args.dsn, autocommit=True) as conn:
            cpu_before = machine_cpu()
            db_before = await backend_cpu(conn)
            workers_before = [process_cpu_seconds(w["process"].pid) or 0.0 for w in workers]
            t_go = time.monotonic()
            for w in workers:
                w["process"].stdin.write(b"go\n")
                w["process"].stdin.flush()
            spy = None
            if args.py_spy:
                raw = Path(args.out).with_suffix(".profile.raw")
                spy = profile.start(Path(args.py_spy), workers[0]["process"].pid, 3, raw)
            t_done = await wait_done(conn, system.remaining_sql, 300, args.poll, workers)
            if spy:
                spy.wait(30)
                raw.with_suffix(".txt").write_text(profile.summarize(raw))
            result["throughput_window_s"] = t_done - t_go
            result["machine_busy"] = busy_fraction(cpu_before, machine_cpu())
            db_after = await backend_cpu(conn)
            db_cpu = sum(s - db_before.get(pid, 0.0) for pid, s in db_after.items())
            result["db_cpu_us_per_job"] = db_cpu / args.jobs * 1e6
            cpu = [process_cpu_seconds(w["process"].pid) or 0.0 for w in workers]
            result["worker_cpu_us_per_job"] = (sum(cpu) - sum(workers_before)) / args.jobs * 1e6
            result["throughput"] = args.jobs / (t_done - t_go)

            # Idle for a moment: the latency phase starts from a quiet queue.
            await asyncio.sleep(1.0)
            commits: dict[int, float] = {}
            enqueue_calls: list[float] = []
            async with system.enqueuer(args.dsn) as enqueue:
                base = args.jobs
                # One call outside the measurement warms the enqueuer's connection up.
                t0 = time.monotonic()
                await enqueue(base, t0)
                commits[base] = time.monotonic()
                await asyncio.sleep(0.2)
                schedule = time.monotonic()
                for i in range(1, args.latency_jobs + 1):
                    delay = schedule + i * args.interval - time.monotonic()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    t0 = time.monotonic()
                    await enqueue(base + i, t0)
                    commits[base + i] = time.monotonic()
                    enqueue_calls.append(commits[base + i] - t0)
            await wait_done(conn, system.remaining_sql, 60, 0.05, workers)
        result["worker_rss_hwm_kb"] = [proc_status_kb(w["process"].pid, "VmHWM") for w in workers]
    finally:
        stop_workers(workers)

    records: list[Record] = []
    for w in workers:
        try:
            records += [tuple(r) for r in json.loads(w["records"].read_text())]  # type: ignore[misc]
        except (OSError, ValueError):
            raise RuntimeError("a worker wrote no records:\n" + worker_log_tail(workers)) from None
    throughput_starts = [start for n, _t0, start in records if n < args.jobs]
    result["first_job_start_after_go_ms"] = (min(throughput_starts) - t_go) * 1000
    measured = [(n, t0, start) for n, t0, start in records if n > args.jobs and t0 is not None]
    result["runs_per_job"] = len(records) / (args.jobs + args.latency_jobs + 1)
    result["wakeup_ms"] = summary_ms([start - t0 for _n, t0, start in measured])
    result["commit_to_start_ms"] = summary_ms([start - commits[n] for n, _t0, start in measured])
    result["enqueue_call_ms"] = summary_ms(enqueue_calls)
    return result


def run_main(args: argparse.Namespace) -> int:
    with tempfile.TemporaryDirectory(prefix=f"pw-bench-{args.system}-") as tmp:
        result = asyncio.run(drive(args, Path(tmp)))
    Path(args.out).write_text(json.dumps(result, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.noop")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run")
    worker = sub.add_parser("worker")
    for p in (run, worker):
        p.add_argument("--system", required=True, choices=["ours", "procrastinate", "pgqueuer"])
        p.add_argument("--dsn", required=True)
        p.add_argument("--concurrency", type=int, default=10)
    run.add_argument("--out", required=True)
    run.add_argument("--workers", type=int, default=2)
    run.add_argument("--jobs", type=int, default=10_000)
    run.add_argument("--latency-jobs", type=int, default=300)
    run.add_argument("--interval", type=float, default=0.02)
    run.add_argument("--poll", type=float, default=0.02, help="seconds between 'done?' polls")
    run.add_argument("--py-spy", help="sample worker 0 for 3 s of the throughput phase")
    worker.add_argument("--records", required=True)
    worker.add_argument("--ready", required=True)
    args = parser.parse_args(argv)
    return run_main(args) if args.command == "run" else worker_main(args)


if __name__ == "__main__":
    sys.exit(main())
