"""The table `make bench` prints, and the run's RESULTS.md.

A run writes its RESULTS.md beside its raw results (bench/.runs/<time>/); only a
recorded run (`make bench BENCH_RECORD=1`) rewrites the committed bench/RESULTS.md.
Either keeps everything of the committed file outside the generated block (between
BEGIN and END) as it is: the profiling notes and the log of changes are written by
hand below it."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

BEGIN = "<!-- bench:begin (written by `make bench`; edit outside this block) -->"
END = "<!-- bench:end -->"

# Issue 5's targets.
# Issue 13's: the RPC at stand-in 0 ms, its overhead over the stand-in at 300 ms, reads.
RPC0_P50, RPC0_P99 = 5.0, 15.0
RPC300_P50, RPC300_P99 = 3.0, 10.0
RPC_READS = 10.0
WAKE_P50, WAKE_P99 = 2.0, 3.5
SUSTAINED_RATE = 100.0
# Issue 13: payments/s at stand-in 0 ms with 2 workers, 1.5 times the 593/s of the
# quiet run of 2026-12-01.
THROUGHPUT0_2 = 1.5 * 593
WORKER_RSS_MB, TOTAL_RSS_MB = 60.0, 1000.0


def mb(kb: float) -> float:
    """kB as /proc counts them (KiB) to MB (10^6 bytes), the unit of the targets."""
    return kb * 1024 / 1e6


def over(value: float, limit: float, unit: str) -> str:
    return f"{value - limit:+.1f} {unit} ({(value / limit - 1) * 100:+.0f} %)"


def check_max(pairs: list[tuple[str, float, float, str]]) -> str:
    """'yes', or 'NO: ' and by how much each value exceeds its limit."""
    missed = [f"{name} {over(v, lim, unit)}" for name, v, lim, unit in pairs if not v <= lim]
    return "yes" if not missed else "NO: " + ", ".join(missed)


def check_min(value: float, limit: float, unit: str) -> str:
    if value >= limit:
        return "yes"
    return f"NO: {value - limit:+.0f}{unit} ({(value / limit - 1) * 100:+.0f} %)"


def rows(results: dict[str, Any]) -> list[tuple[str, str, str, str, str]]:
    out: list[tuple[str, str, str, str, str]] = []

    def add(section: str, what: str, result: str, target: str = "-", met: str = "-") -> None:
        out.append((section, what, result, target, met))

    rpc = results.get("rpc")
    if rpc:
        add(
            "1",
            f"RPC latency ({rpc['n']} calls in a row, stand-in 0 ms, {rpc['workers']} worker)",
            f"p50 {rpc['p50']:.2f}, p95 {rpc['p95']:.2f}, p99 {rpc['p99']:.2f} ms",
            f"p50 ≤ {RPC0_P50:g}, p99 ≤ {RPC0_P99:g} ms",
            check_max([("p50", rpc["p50"], RPC0_P50, "ms"), ("p99", rpc["p99"], RPC0_P99, "ms")]),
        )
    for key, what, p50, p99 in (
        ("rpc", "RPC latency, stand-in 0 ms", RPC0_P50, RPC0_P99),
        ("rpc300", "RPC overhead: latency minus stand-in's 300 ms", RPC300_P50, RPC300_P99),
    ):
        r = results.get(key)
        if not r:
            continue
        if key == "rpc300":
            add(
                "1",
                f"{what} ({r['n']} calls in a row, {r['workers']} workers)",
                f"p50 {r['p50']:.2f}, p95 {r['p95']:.2f}, p99 {r['p99']:.2f} ms",
                f"p50 ≤ {p50:g}, p99 ≤ {p99:g} ms",
                check_max([("p50", r["p50"], p50, "ms"), ("p99", r["p99"], p99, "ms")]),
            )
        if "reads_per_call" in r:
            add(
                "1",
                f"Reads of the payment row per RPC call ({what.split(':')[0]})",
                f"{r['reads_per_call']:.1f}",
                f"≤ {RPC_READS:g}",
                check_max([("reads", r["reads_per_call"], RPC_READS, "")]),
            )
    noop = results.get("noop") or {}
    ours = noop.get("ours")
    if ours:
        w, c = ours["wakeup_ms"], ours["commit_to_start_ms"]
        add(
            "2",
            f"Wake-up: enqueue call → job's first line ({w['n']} jobs "
            f"{ours['interval_s'] * 1000:g} ms apart)",
            f"p50 {w['p50']:.2f}, p99 {w['p99']:.2f} ms",
            f"p50 ≤ {WAKE_P50:g}, p99 ≤ {WAKE_P99:g} ms",
            check_max([("p50", w["p50"], WAKE_P50, "ms"), ("p99", w["p99"], WAKE_P99, "ms")]),
        )
        add(
            "2",
            "Wake-up: enqueue committed → job's first line",
            f"p50 {c['p50']:.2f}, p99 {c['p99']:.2f} ms",
        )
    runs = results.get("throughput") or []
    for run in runs:
        what = f"Throughput, stand-in {run['latency_ms']} ms, {run['workers']} worker"
        what += "s" if run["workers"] > 1 else ""
        result = f"{run['rate']:.0f} payments/s"
        target, met = "-", "-"
        if run["latency_ms"] == 0 and run["workers"] == 2:
            target = f"≥ {THROUGHPUT0_2:.0f}/s (1.5 times 593)"
            met = check_min(run["rate"], THROUGHPUT0_2, "/s")
        if run["sustained"]:
            what += f", {run['window_s']:.0f} s"
            result += f" (worst 5 s: {run['worst_window_rate']:.0f})"
            target = f"≥ {SUSTAINED_RATE:g}/s for 60 s"
            missed = []
            if run["worst_window_rate"] < SUSTAINED_RATE:
                missed.append(f"worst {run['worst_window_rate']:.0f}/s")
            if run["window_s"] < 59:
                missed.append(f"only {run['window_s']:.0f} s")
            met = "NO: " + ", ".join(missed) if missed else "yes"
        result += f"; RSS ≤ {mb(run['memory']['worker_hwm_max_kb']):.1f} MB/worker"
        add("3", what, result, target, met)
    if runs:
        peak = max(mb(r["memory"]["worker_hwm_max_kb"]) for r in runs)
        add(
            "4",
            "Peak RSS (VmHWM) of a worker, largest of all runs",
            f"{peak:.1f} MB",
            f"≤ {WORKER_RSS_MB:g} MB",
            check_max([("", peak, WORKER_RSS_MB, "MB")]),
        )
        for r in runs:
            if r["sustained"]:
                mem = r["memory"]
                everything = mb(mem["all_hwm_total_kb"])
                add(
                    "4",
                    f"Peak RSS total in the {r['window_s']:.0f} s run "
                    "(every process of supervisord)",
                    f"{everything:.0f} MB ({mb(mem['worker_hwm_total_kb']):.0f} MB workers)",
                    f"≤ {TOTAL_RSS_MB:g} MB",
                    check_max([("", everything, TOTAL_RSS_MB, "MB")]),
                )
    out += noop_rows(noop, "5", "")
    contended = results.get("noop_contended") or {}
    if contended:
        load = results.get("contention_load") or {}
        out += noop_rows(
            contended,
            "5c",
            f", under contention ({load.get('processes', '?')} busy processes at nice "
            f"{load.get('nice', '?')})",
        )
    if results.get("webhooks"):
        from bench import webhooks

        out += webhooks.rows(results["webhooks"])
    if results.get("events"):
        from bench import event_apply

        out += event_apply.rows(results["events"])
    if results.get("operations"):
        from bench import operations

        out += operations.rows(results["operations"])
    return out


def noop_rows(
    noop: dict[str, Any], section: str, condition: str
) -> list[tuple[str, str, str, str, str]]:
    """The no-op throughput and wake-up rows of one set of runs, ours against the best peer
    of the same set."""
    out: list[tuple[str, str, str, str, str]] = []

    def add(what: str, result: str, target: str = "-", met: str = "-") -> None:
        out.append((section, what, result, target, met))

    peers = [noop[s] for s in ("procrastinate", "pgqueuer") if s in noop]
    for name in ("ours", "procrastinate", "pgqueuer"):
        r = noop.get(name)
        if not r:
            continue
        target, met = "-", "-"
        if name == "ours" and peers:
            best = max(p["throughput"] for p in peers)
            target = f"≥ best peer ({best:.0f})"
            ratio = r["throughput"] / best - 1
            met = "yes" if ratio >= 0 else f"NO: {ratio * 100:+.0f} %"
        add(
            f"No-op, {r['jobs']:,} jobs, {r['workers']} processes{condition}: {_label(r)}"
            f" ({COMPLETION.get(r['system'], '?')})",
            f"{r['throughput']:.0f} jobs/s (CPU/job: worker {r['worker_cpu_us_per_job']:.0f} µs,"
            f" server {r['db_cpu_us_per_job']:.0f} µs)",
            target,
            met,
        )
    for name in ("ours", "procrastinate", "pgqueuer"):
        r = noop.get(name)
        if not r:
            continue
        w, c = r["wakeup_ms"], r["commit_to_start_ms"]
        target, met = "-", "-"
        if name == "ours" and peers:
            p50 = min(p["commit_to_start_ms"]["p50"] for p in peers)
            p99 = min(p["commit_to_start_ms"]["p99"] for p in peers)
            target = f"≤ best peer ({p50:.2f}, {p99:.2f})"
            met = check_max([("p50", c["p50"], p50, "ms"), ("p99", c["p99"], p99, "ms")])
        add(
            f"Wake-up at {1 / r['interval_s']:g} jobs/s{condition}, enqueue committed → "
            f"job start: {_label(r)} ({CLAIM_COMMIT.get(r['system'], '?')})",
            f"p50 {c['p50']:.2f}, p99 {c['p99']:.2f} ms (from the enqueue call: "
            f"{w['p50']:.2f}, {w['p99']:.2f})",
            target,
            met,
        )
    return out


# How each system commits its claims and how durable a finished job is when it
# counts as done (printed with the wake-up and no-op rows: the comparison's terms).
CLAIM_COMMIT = {
    "ours": "claim synchronous_commit=off",
    "procrastinate": "claim synchronous_commit=on (server default)",
    "pgqueuer": "claim synchronous_commit=on (server default)",
}
COMPLETION = {
    "ours": "completion durable at commit (group commit)",
    "procrastinate": "completion durable at commit, one per job",
    "pgqueuer": "completion buffered in memory (~0.1 s) before its commit",
}


def _label(r: dict[str, Any]) -> str:
    return "ours" if r["system"] == "ours" else f"{r['label']} {r['version']}"


HEADER = ("#", "measurement", "result", "target", "met")


def table(results: dict[str, Any]) -> str:
    body = rows(results)
    widths = [max(len(r[i]) for r in [HEADER, *body]) for i in range(len(HEADER))]
    line = "  ".join("-" * w for w in widths)
    text = ["  ".join(h.ljust(w) for h, w in zip(HEADER, widths, strict=True)), line]
    text += ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in body]
    return "\n".join(t.rstrip() for t in text)


def markdown_table(results: dict[str, Any]) -> str:
    lines = ["| " + " | ".join(HEADER) + " |", "|" + "---|" * len(HEADER)]
    lines += ["| " + " | ".join(r) + " |" for r in rows(results)]
    return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return "nan"
        return f"{v:.0f}" if abs(v) >= 100 else f"{v:.2f}"
    return str(v)


METHOD = """\
### Method

Every database is a fresh one this run creates and drops (`pw_bench_<pid>_*`): a
template gets the schema by `sqitch deploy`, each run gets a clone (ours) or an empty
database (peers). The Stripe stand-in is `python -m stripe_standin` with
`--latency-ms 0` or `300`. Times are `time.monotonic()` (CLOCK_MONOTONIC, one clock
for every process of the machine) or `perf_counter()` within a process.

1. **RPC latency**: the real `supervisord.conf` under a real supervisord (one worker,
   the default), then sequential `SELECT create_payment_intent_sync(2500, …)` calls on
   one psycopg connection, each timed in-process from `execute()` to the row in hand;
   20 untimed warm-up calls first (they open the session's loopback connection).
2. **Wake-up** (ours and the peers alike, `bench/noop.py`): with the workers idle,
   jobs are enqueued one call at a time on a fixed 20 ms schedule (50 jobs/s); `t0` is
   taken just before the enqueue call and travels in the job's args; the job's
   handler takes the time on its first line. "From commit" starts when the enqueue
   call has returned (its transaction committed); it can be negative when the worker
   starts the job before the enqueuing client has read its COMMIT's answer. Ours is
   the queue core - `Producer` + `Store` + `JobExecutor` + `InsertListener` and the
   leader-elected maintenance loops, wired as `worker/service.py` wires them, with a
   no-op `bench_noop` kind (`bench/noop_ours.py`); enqueue is a River-style
   `INSERT INTO metadata.river_job`.
3. **Throughput**: the real supervisord with `RIVER_WORKER_COUNT` = 1, 2, 4, 8
   (`WORKER_CONCURRENCY` 10, `DB_MAX_CONNS` 4: the defaults). Payments are inserted
   in bulk (`INSERT … SELECT generate_series`, 1,000-2,000 at a time) so that at
   least 1,000 always wait; every 0.25 s the run counts the payments still
   `pending_intent`. A payment is done when its intent and its job's completion have
   committed. Rate = payments done in the window after the warm-up / window; the
   sustained run also reports its worst 5-second stretch.
4. **RSS**: `VmHWM` (peak resident set) from `/proc/<pid>/status` of every process
   supervisord runs, read at the end of each run, before stopping it.
5. **No-op queue comparison** (`bench/noop.py`, the same driver for all three; peers
   from `bench/.venv-peers`, pinned in `bench/requirements-peers.txt`): each system's
   own schema installer, its own enqueue API (its batch API for the pre-inserted jobs),
   its own worker loop with LISTEN/NOTIFY, concurrency 10 per process, 2 worker
   processes. 10,000 jobs are inserted before the workers start; the workers import and
   set up, then all get "go" at once; the run ends when the database shows every job
   durably completed (ours `completed`, procrastinate `succeeded`, pgqueuer: deleted
   from its queue table, which it does when its batched completion log is written),
   polled every 20 ms. Then the wake-up run above, with the same workers.
6. **Contention variant** (`bench/contention.py`): the no-op and wake-up runs of 5
   again, for every system, with one busy process per core at nice 19 running for
   the whole set; reported beside the quiet figures (rows 5c).
7. **Capture and refund latency** (`bench/operations.py`): the real supervisord (one
   worker, the webhook receiver), the stand-in at 0 ms delivering its webhooks.
   Untimed setup: manual-capture and automatic payments paid by card and followed
   through the event path to `requires_capture` and `succeeded`. Then, as in 1, no
   webhooks (delivery switched off, the queue drained) and, on one connection of a
   `payment_operator` login, sequential `capture_payment(id)` calls
   (each a full capture) and sequential `refund_payment(id, 1000)` calls, each timed
   in-process from `execute()` to the row in hand; 10 untimed warm-up calls of each.

The supervisord of the runs is the repo's `supervisord.conf` with only its control
socket, pidfile and metrics directory moved into a temporary directory, so that a
`make test` running at the same time in this checkout (which uses those paths) and the
benchmark cannot collide. Other work on the machine or the server is not stopped: the
load average and the server's other active sessions are recorded below.
"""


def details(results: dict[str, Any]) -> str:
    env = results["environment"]
    v = env["versions"]
    out = [
        f"Run of {env['date']}, commit {env['commit']}, total runtime "
        f"{results['runtime_s']:.0f} s.",
        "",
        f"- Machine: {env['cpu']}, {env['cores']} cores, {env['memory_gb']} GB RAM; "
        f"{env['os']}, Linux {env['kernel']}",
        "- Versions: " + ", ".join(f"{k} {val}" for k, val in v.items()),
        "- PostgreSQL settings: "
        + ", ".join(f"{k}={val}" for k, val in env["pg_settings"].items()),
        f"- Other load: load average {results['load_before']['load1']:.2f} before, "
        f"{results['load_after']['load1']:.2f} after; other active sessions on the server "
        f"{results['load_before']['other_active_backends']} before, "
        f"{results['load_after']['other_active_backends']} after",
    ]
    return "\n".join(out)


def appendix(results: dict[str, Any]) -> str:
    out: list[str] = []
    noop = results.get("noop") or {}
    if "ours" in noop and "claim_plan" in noop["ours"]:
        plan = noop["ours"]["claim_plan"]
        out += [
            "### The claim's plan on a fresh, never-analysed table",
            "",
            f"The claim query inside `payments.job_claim` with {plan['live_rows']} jobs just "
            f"inserted, before any ANALYZE (analysed before: {plan['analysed_before']}); "
            "auto_explain's ANALYZE of the function's own statement, in a rolled-back "
            "transaction:",
            "",
        ]
        for mode in ("force_custom_plan", "force_generic_plan"):
            out += [f"`plan_cache_mode = {mode}`:", "", "```", *plan[mode], "```", ""]
    for title, runs_of in (
        ("No-op runs in detail", noop),
        ("No-op runs in detail, under contention", results.get("noop_contended") or {}),
    ):
        out += noop_details(title, runs_of)
    runs = results.get("throughput") or []
    if runs:
        out += [
            "### Throughput runs in detail",
            "",
            "| stand-in ms | workers | start-up s | window s | payments/s | worst 5 s | "
            "inserted | failed | warnings | worker peak RSS MB | all processes MB | "
            "CPU µs/payment: workers, stand-in, server | machine CPU busy |",
            "|" + "---|" * 13,
        ]
        for r in runs:
            mem = r["memory"]
            per = ", ".join(
                f"{mb(p['hwm_kb']):.1f}"
                for p in mem["processes"]
                if p["name"].startswith("worker-") and p["hwm_kb"]
            )
            out.append(
                f"| {r['latency_ms']} | {r['workers']} | {r['startup_s']:.1f} | "
                f"{r['window_s']:.1f} | {r['rate']:.0f} | {r['worst_window_rate']:.0f} | "
                f"{r['inserted']} | {r['failed']} | {r['warning_count']} | {per} | "
                f"{mb(mem['all_hwm_total_kb']):.0f} | {_cpu(r.get('cpu_per_payment'))} |"
            )
        out.append("")
    return "\n".join(out)


def noop_details(title: str, noop: dict[str, Any]) -> list[str]:
    out: list[str] = []
    if noop:
        keys = [
            ("throughput", "jobs/s"),
            ("throughput_window_s", "window s"),
            ("first_job_start_after_go_ms", "first job after go, ms"),
            ("worker_cpu_us_per_job", "worker CPU µs/job"),
            ("db_cpu_us_per_job", "server CPU µs/job"),
            ("machine_busy", "machine CPU busy"),
            ("bulk_insert_s", "bulk insert s"),
            ("runs_per_job", "runs per job"),
        ]
        out += [
            f"### {title}",
            "",
            "| system | " + " | ".join(k[1] for k in keys) + " | enqueue call p50/p99 ms | "
            "worker peak RSS MB |",
            "|" + "---|" * (len(keys) + 3),
        ]
        for name, r in noop.items():
            rss = ", ".join(f"{mb(k):.1f}" for k in r.get("worker_rss_hwm_kb") or [] if k)
            e = r["enqueue_call_ms"]
            out.append(
                f"| {name} | "
                + " | ".join(_fmt(r.get(k)) for k, _ in keys)
                + f" | {e['p50']:.2f} / {e['p99']:.2f} | {rss} |"
            )
        out.append("")
    return out


def _cpu(cpu: dict[str, Any] | None) -> str:
    if not cpu:
        return "- | -"
    parts = [cpu["workers_us"], cpu["standin_us"], cpu["server_us"]]
    shown = ", ".join("-" if v is None else f"{v:.0f}" for v in parts)
    return f"{shown} | {cpu['machine_busy']:.2f}"


def generated(results: dict[str, Any]) -> str:
    return "\n".join(
        [
            BEGIN,
            "## Latest run",
            "",
            details(results),
            "",
            markdown_table(results),
            "",
            appendix(results),
            METHOD,
            END,
        ]
    )


def results_text(results: dict[str, Any], committed: str | None) -> str:
    """`committed` (the hand-written parts kept) with its generated block replaced."""
    block = generated(results)
    if committed is not None and BEGIN in committed and END in committed:
        head, rest = committed.split(BEGIN, 1)
        _, tail = rest.split(END, 1)
        return head + block + tail
    return "# Benchmark results (`make bench`)\n\n" + block + "\n\n## Profiling and changes\n"


def publish(
    results: dict[str, Any], committed: Path, run_path: Path, record: bool = False
) -> list[Path]:
    """Writes the run's RESULTS.md to `run_path`, and `committed` itself only if `record`;
    returns what it wrote."""
    text = results_text(results, committed.read_text() if committed.exists() else None)
    run_path.parent.mkdir(parents=True, exist_ok=True)
    run_path.write_text(text)
    if not record:
        return [run_path]
    committed.write_text(text)
    return [run_path, committed]
