"""`make bench`: every measurement of issue 5 in one run, one table, the run's RESULTS.md.

    scripts/with-env.sh .venv/bin/python -m bench [--quick]
        [--only rpc,noop,contention,...,events,operations] [--record]

The run's RESULTS.md goes beside its raw results in bench/.runs/<time>/ (the path is
printed); --record (`make bench BENCH_RECORD=1`) also rewrites the committed
bench/RESULTS.md.

Each database it uses is a fresh one it creates (pw_bench_<pid>_...) and drops at the
end, never the `payment_worker` database of `make run`. See bench/RESULTS.md, "Method"."""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from stripe_standin.process import StandinProcess

from bench import (
    contention,
    event_apply,
    operations,
    peers_venv,
    report,
    rpc_latency,
    throughput,
    webhooks,
)
from bench.common import BENCH_DIR, ROOT, admin_url, as_login, database_url
from bench.supervised import BenchSupervisord

PREFIX = f"pw_bench_{os.getpid()}_"
RECORDED = BENCH_DIR / "RESULTS.md"  # committed: rewritten only by --record


def shown(path: Path) -> str:
    """`path` relative to the checkout when it is inside it."""
    return str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)


@contextlib.contextmanager
def databases() -> Iterator[Any]:
    """create(name, template=None) -> URL of a new database; all of them dropped at the end."""
    created: list[str] = []
    admin = psycopg.connect(admin_url(), autocommit=True)
    drop_stale(admin)
    drop_stale_logins(admin)

    def create(name: str, template: str | None = None) -> str:
        full = PREFIX + name
        query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(full))
        if template:
            query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(PREFIX + template))
        admin.execute(query)
        created.append(full)
        return database_url(full)

    try:
        yield create
    finally:
        for name in reversed(created):
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )
        admin.close()


def drop_stale(admin: psycopg.Connection[Any]) -> None:
    """Drops pw_bench_<pid>_* databases left by an earlier run whose process is gone."""
    rows = admin.execute(
        "SELECT datname FROM pg_database WHERE datname ~ '^pw_bench_[0-9]+_'"
    ).fetchall()
    for (name,) in rows:
        pid = int(name.split("_")[2])
        if not Path(f"/proc/{pid}").exists():
            admin.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def drop_stale_logins(admin: psycopg.Connection[Any]) -> None:
    """Drops pw_bench_<pid>_worker logins left by an earlier run whose process is gone."""
    rows = admin.execute("SELECT rolname FROM pg_roles WHERE rolname ~ '^pw_bench_[0-9]+_'")
    for (name,) in rows.fetchall():
        if not Path(f"/proc/{int(name.split('_')[2])}").exists():
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))


@contextlib.contextmanager
def worker_login(
    groups: tuple[str, ...] = ("payment_worker",), suffix: str = "worker"
) -> Iterator[tuple[str, str]]:
    """(user, password) of a LOGIN role that is only a member of `groups`, as the workers
    run in production; dropped at the end. The password matters only on a server that
    asks for one."""
    name, password = PREFIX + suffix, secrets.token_urlsafe(18)
    with psycopg.connect(admin_url(), autocommit=True) as admin:
        admin.execute(
            sql.SQL("CREATE ROLE {} LOGIN NOSUPERUSER PASSWORD {}").format(
                sql.Identifier(name), sql.Literal(password)
            )
        )
        try:
            for group in groups:
                admin.execute(
                    sql.SQL("GRANT {} TO {}").format(sql.Identifier(group), sql.Identifier(name))
                )
            yield name, password
        finally:
            admin.execute(
                "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(name)))


def deploy(url: str) -> None:
    """sqitch deploy of schema/ into the database at `url`, as tests/pg.py does."""
    sqitch = os.environ.get("PW_SQITCH") or "sqitch"
    target = "db:" + url.replace("postgresql://", "pg://", 1)
    result = subprocess.run(
        [sqitch, "--chdir", str(ROOT / "schema"), "deploy", target],
        capture_output=True,
        text=True,
        check=False,
        timeout=180,
        env={**os.environ, "SQITCH_USER_CONFIG": os.devnull, "SQITCH_SYSTEM_CONFIG": os.devnull},
    )
    if result.returncode != 0:
        raise RuntimeError(f"sqitch deploy failed:\n{result.stdout}\n{result.stderr}")


def log(message: str) -> None:
    print(f"bench [{time.strftime('%H:%M:%S')}] {message}", flush=True)


# --- sections -----------------------------------------------------------------------------


def section_rpc(
    create: Any,
    args: argparse.Namespace,
    runs: Path,
    *,
    latency_ms: int = 0,
    workers: int | None = None,
    calls: int | None = None,
) -> dict[str, Any]:
    workers = args.rpc_workers if workers is None else workers
    calls = args.rpc_calls if calls is None else calls
    dsn = create(f"rpc{latency_ms}", template="tpl")
    with (
        StandinProcess(latency_ms=latency_ms, quiet=True) as standin,
        BenchSupervisord(
            {
                "DATABASE_URL": as_login(dsn, *args.worker_login),
                "STRIPE_API_KEY": "sk_test_payment_worker_bench",
                "STRIPE_API_BASE": standin.url,
                "RIVER_WORKER_COUNT": str(workers),
            },
            runs / f"rpc{latency_ms}",
        ) as sup,
    ):
        sup.wait_workers(workers)
        result = rpc_latency.measure(dsn, calls, stripe_latency_ms=latency_ms)
    result["workers"] = workers
    result["stripe_latency_ms"] = latency_ms
    return result


def section_noop(
    create: Any, args: argparse.Namespace, runs: Path, *, variant: str = ""
) -> dict[str, Any]:
    """Each system's no-op throughput and wake-up runs; `variant` names the databases and
    files of a second set of runs (the contention variant)."""
    results: dict[str, Any] = {}
    peers_python = peers_venv.ensure()
    for system in ("ours", "procrastinate", "pgqueuer"):
        if system == "ours":
            dsn, python = create(f"noop{variant}_ours", template="tpl"), sys.executable
        else:
            dsn, python = create(f"noop{variant}_{system}"), str(peers_python)
        out = runs / f"noop{variant}-{system}.json"
        log(f"no-op jobs: {system}{' (' + variant + ')' if variant else ''}")
        subprocess.run(
            [
                python,
                "-m",
                "bench.noop",
                "run",
                "--system",
                system,
                "--dsn",
                dsn,
                "--out",
                str(out),
                "--jobs",
                str(args.noop_jobs),
                "--latency-jobs",
                str(args.latency_jobs),
                "--interval",
                str(args.latency_interval),
                "--workers",
                "2",
                *(
                    ["--py-spy", str(peers_venv.py_spy())]
                    if args.profile and system == "ours" and not variant
                    else []
                ),
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT)},
            check=True,
            timeout=400,
        )
        results[system] = json.loads(out.read_text())
    return results


def section_throughput(create: Any, args: argparse.Namespace, runs: Path) -> list[dict[str, Any]]:
    results = []
    for latency in (0, 300):
        with StandinProcess(latency_ms=latency, quiet=True) as standin:
            for workers in args.counts:
                sustained = latency == 300 and workers == args.sustained_workers
                warmup, duration = (
                    (args.sustained_warmup, args.sustained)
                    if sustained
                    else (args.warmup, args.duration)
                )
                dsn = create(f"tp_{latency}_{workers}", template="tpl")
                log(
                    f"throughput: stand-in {latency} ms, {workers} workers, "
                    f"{warmup:g} s warm-up + {duration:g} s"
                )
                result = throughput.run(
                    dsn,
                    as_login(dsn, *args.worker_login),
                    standin.url,
                    workers,
                    warmup=warmup,
                    duration=duration,
                    tmp=runs / f"tp-{latency}-{workers}",
                    py_spy=peers_venv.py_spy()
                    if args.profile and latency == 0 and workers == args.counts[0]
                    else None,
                    standin_pid=standin.pid,
                )
                result.update(latency_ms=latency, sustained=sustained)
                log(
                    f"  {result['rate']:.0f} payments/s (worst {throughput.WINDOW:g} s: "
                    f"{result['worst_window_rate']:.0f}/s), peak RSS per worker "
                    f"{result['memory']['worker_hwm_max_kb'] / 1024:.1f} MB"
                )
                results.append(result)
    return results


def section_webhooks(create: Any, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    dsn = create("webhooks", template="tpl")
    with worker_login(("payment_webhook",), suffix="webhook") as login:
        log(
            f"webhooks: {webhooks.RATE:g} events/s, {args.webhook_warmup:g} s warm-up + "
            f"{args.webhook_duration:g} s"
        )
        result = webhooks.run(
            dsn,
            as_login(dsn, *login),
            runs / "webhooks",
            rate=webhooks.RATE,
            warmup=args.webhook_warmup,
            duration=args.webhook_duration,
        )
    ack = result["ack_ms"]
    log(
        f"  ack p50 {ack['p50']:.2f} ms, p99 {ack['p99']:.2f} ms; receiver peak RSS "
        f"{report.mb(result['receiver_hwm_kb']):.1f} MB"
    )
    return result


def section_events(create: Any, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    dsn = create("events", template="tpl")
    with worker_login(("payment_webhook",), suffix="events_webhook") as login:
        log(
            f"events: {event_apply.PAYMENTS} payments paid at {1 / event_apply.PACE_SECONDS:g}/s,"
            f" webhook → receiver → {event_apply.WORKERS} workers"
        )
        result = event_apply.run(
            dsn, as_login(dsn, *args.worker_login), as_login(dsn, *login), runs / "events"
        )
    applied = result["apply_ms"]
    log(f"  event received → row updated p50 {applied['p50']:.2f} ms, p99 {applied['p99']:.2f} ms")
    return result


def section_operations(create: Any, args: argparse.Namespace, runs: Path) -> dict[str, Any]:
    dsn = create("operations", template="tpl")
    with (
        worker_login(("payment_webhook",), suffix="operations_webhook") as webhook,
        worker_login(("payment_operator",), suffix="operator") as operator,
    ):
        log(
            f"operations: {args.operation_calls} capture_payment then as many refund_payment"
            f" calls in a row, stand-in at 0 ms, {operations.WORKERS} worker"
        )
        result: dict[str, Any] = operations.run(
            dsn,
            as_login(dsn, *args.worker_login),
            as_login(dsn, *webhook),
            as_login(dsn, *operator),
            runs / "operations",
            calls=args.operation_calls,
        )
    for name in ("capture", "refund"):
        s = result[f"{name}_ms"]
        log(f"  {name}_payment p50 {s['p50']:.2f} ms, p99 {s['p99']:.2f} ms")
    return result


# --- environment --------------------------------------------------------------------------


def environment(peers: dict[str, Any] | None) -> dict[str, Any]:
    cpu = "unknown"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    mem_kb = 0
    with contextlib.suppress(OSError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                mem_kb = int(line.split()[1])
    os_name = platform.platform()
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('server_version'), current_setting('synchronous_commit'), "
            "current_setting('fsync'), current_setting('shared_buffers')"
        ).fetchone()
        assert row is not None
    commit = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    dirty = subprocess.run(
        ["git", "-C", str(ROOT), "status", "--porcelain", "--", "worker", "schema", "common"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.strip()
    versions = {
        "python": platform.python_version(),
        "postgresql": row[0],
        "psycopg": version("psycopg"),
        "psycopg-pool": version("psycopg-pool"),
        "stripe": version("stripe"),
        "supervisor": version("supervisor"),
    }
    for system in ("procrastinate", "pgqueuer"):
        if peers and system in peers:
            versions[system] = peers[system]["version"]
    return {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gb": round(mem_kb / 1024 / 1024, 1),
        "os": os_name,
        "kernel": platform.release(),
        "pg_settings": {
            "synchronous_commit": row[1],
            "fsync": row[2],
            "shared_buffers": row[3],
        },
        "commit": commit + (" (worker/, schema/ or common/ modified)" if dirty else ""),
        "versions": versions,
    }


def other_load() -> dict[str, Any]:
    """What else the machine and the server were doing: the runs share both."""
    load1, load5, _ = os.getloadavg()
    with psycopg.connect(admin_url(), autocommit=True) as conn:
        row = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
            "AND state = 'active' AND pid <> pg_backend_pid() "
            "AND coalesce(datname, '') NOT LIKE 'pw\\_bench\\_%'"
        ).fetchone()
    return {"load1": load1, "load5": load5, "other_active_backends": row[0] if row else 0}


# --- main ---------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny runs, to check the harness")
    parser.add_argument(
        "--only", default="rpc,noop,contention,throughput,webhooks,events,operations"
    )
    parser.add_argument(
        "--results", help="where to write the run's RESULTS.md (default: its bench/.runs/ dir)"
    )
    parser.add_argument("--no-results", action="store_true", help="do not write RESULTS.md")
    parser.add_argument(
        "--record",
        action="store_true",
        help="also rewrite the committed bench/RESULTS.md (make bench BENCH_RECORD=1)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="py-spy a worker (bench/profile.py), see .runs/"
    )
    args = parser.parse_args(argv)
    if args.record and (args.quick or args.no_results):
        parser.error("--record records a full run: not with --quick or --no-results")
    args.only = set(args.only.split(","))
    # Sized for a 2-core machine: the whole run stays well under 10 minutes.
    args.rpc_calls, args.rpc_workers, args.rpc300_calls = 1000, 1, 100
    args.noop_jobs, args.latency_jobs, args.latency_interval = 10_000, 300, 0.02
    args.counts, args.warmup, args.duration = (1, 2, 4, 8), 3.0, 8.0
    args.sustained_workers, args.sustained_warmup, args.sustained = 8, 5.0, 60.0
    args.webhook_warmup, args.webhook_duration = 3.0, 20.0
    args.operation_calls = operations.CALLS
    if args.quick:
        args.webhook_warmup, args.webhook_duration = 1.0, 3.0
        args.operation_calls = 30
        args.rpc_calls, args.noop_jobs, args.latency_jobs = 100, 1000, 50
        args.counts, args.warmup, args.duration = (1, 2), 1.0, 3.0
        args.sustained_workers, args.sustained_warmup, args.sustained = 2, 1.0, 5.0
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    runs = BENCH_DIR / ".runs" / time.strftime("%Y%m%d-%H%M%S")
    runs.mkdir(parents=True, exist_ok=True)
    # Logs and raw results of the last few runs only.
    for old in sorted((BENCH_DIR / ".runs").iterdir())[:-3]:
        shutil.rmtree(old, ignore_errors=True)
    results: dict[str, Any] = {
        "args": {k: sorted(v) if isinstance(v, set) else v for k, v in vars(args).items()}
    }
    results["load_before"] = other_load()
    with databases() as create, contextlib.ExitStack() as stack:
        log("deploying the schema into a template database (sqitch)")
        deploy(create("tpl"))
        # The workers run as a payment_worker login (created once the deploy has made the
        # group), the calls and the checks as the admin.
        args.worker_login = stack.enter_context(worker_login())
        if "rpc" in args.only:
            log(f"RPC latency: {args.rpc_calls} sequential calls, stand-in at 0 ms")
            results["rpc"] = section_rpc(create, args, runs)
            log("RPC overhead: 100 sequential calls, stand-in at 300 ms, 2 workers")
            results["rpc300"] = section_rpc(
                create, args, runs, latency_ms=300, workers=2, calls=args.rpc300_calls
            )
        if "noop" in args.only:
            results["noop"] = section_noop(create, args, runs)
        if "contention" in args.only:
            with contention.background_load() as load:
                log(
                    f"contention variant: {load['processes']} busy processes at nice "
                    f"{load['nice']} for the no-op and wake-up runs"
                )
                results["noop_contended"] = section_noop(create, args, runs, variant="_contended")
            results["contention_load"] = load
        if "throughput" in args.only:
            results["throughput"] = section_throughput(create, args, runs)
        if "webhooks" in args.only:
            results["webhooks"] = section_webhooks(create, args, runs)
        if "events" in args.only:
            results["events"] = section_events(create, args, runs)
        if "operations" in args.only:
            results["operations"] = section_operations(create, args, runs)
    results["load_after"] = other_load()
    results["environment"] = environment(results.get("noop"))
    results["runtime_s"] = time.monotonic() - started
    (runs / "results.json").write_text(json.dumps(results, indent=2, default=str))
    table = report.table(results)
    print()
    print(table)
    print(f"\ntotal runtime {results['runtime_s']:.0f} s; raw results in {runs.relative_to(ROOT)}")
    if not args.no_results:
        run_path = Path(args.results) if args.results else runs / "RESULTS.md"
        for path in report.publish(results, RECORDED, run_path, record=args.record):
            print(f"wrote {shown(path)}")
        if not args.record:
            print(f"(not recorded: {shown(RECORDED)} is unchanged; BENCH_RECORD=1 records)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
