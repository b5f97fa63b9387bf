"""The metrics as an operator sees them: the repo's supervisord.conf runs the workers, the
exporter (`python -m metrics`) and metrics-reaper; payments go in through psql; the numbers
are read back from /metrics and /healthz over HTTP, and through a real Prometheus server."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from stripe_standin.client import api_error
from stripe_standin.process import StandinProcess
from tests.acceptance.conftest import (
    StartSupervisord,
    Supervisord,
    free_port,
    payment_sql,
    psql_ok,
    rpc,
    wait_until,
)
from tests.deploy.deployfiles import CONTRACT, COUNTER, GAUGE, HISTOGRAM, SCRAPE_JOB

pytestmark = pytest.mark.acceptance

QUEUE = "payments"  # schema/sqitch.conf
KIND = "create_payment_intent"
HEARTBEAT_MAX_AGE = 3.0  # METRICS_HEARTBEAT_MAX_AGE given to the exporter
STANDIN_LATENCY = 0.05  # seconds, before each stand-in answer


def http_get(url: str) -> tuple[int, str, str]:
    """(status, Content-Type, body) of a GET; 4xx/5xx are answers too."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - our URL
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        with exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()


# --- the exporter -------------------------------------------------------------------------------


@dataclass
class Scrape:
    """One GET /metrics, parsed."""

    content_type: str
    families: dict[str, Any]  # family name -> prometheus_client Metric

    def samples(self, name: str, **labels: str) -> list[Sample]:
        return [
            s
            for family in self.families.values()
            for s in family.samples
            if s.name == name and labels.items() <= s.labels.items()
        ]

    def total(self, name: str, **labels: str) -> float:
        return sum(s.value for s in self.samples(name, **labels))

    def value(self, name: str, **labels: str) -> float:
        found = self.samples(name, **labels)
        assert len(found) == 1, f"expected one {name}{labels} sample, got {found}"
        return found[0].value


class Exporter:
    def __init__(self, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"

    def scrape(self) -> Scrape:
        status, content_type, body = http_get(self.url + "/metrics")
        assert status == 200, body
        families = {f.name: f for f in text_string_to_metric_families(body)}
        return Scrape(content_type, families)

    def health(self) -> tuple[int, dict[str, Any]]:
        status, _, body = http_get(self.url + "/healthz")
        report: dict[str, Any] = json.loads(body)
        return status, report

    def wait_healthy(self, sup: Supervisord, timeout: float = 15) -> None:
        def healthy() -> bool:
            try:
                return self.health()[0] == 200
            except OSError:
                return False

        wait_until(healthy, timeout, lambda: f"/healthz never answered 200:\n{sup.output()}")


@pytest.fixture
def metrics_port() -> int:
    """Never the default 9187: a user's `make run` may hold it."""
    return free_port()


@pytest.fixture
def metrics_env(worker_env: dict[str, str], metrics_port: int) -> dict[str, str]:
    return {
        **worker_env,  # RIVER_WORKER_COUNT=2
        "METRICS_PORT": str(metrics_port),
        "METRICS_HOST": "127.0.0.1",
        "METRICS_HEARTBEAT_MAX_AGE": f"{HEARTBEAT_MAX_AGE:g}",
    }


@pytest.fixture
def exporter(metrics_port: int) -> Exporter:
    return Exporter(metrics_port)


@pytest.fixture
def running(
    start_supervisord: StartSupervisord, metrics_env: dict[str, str], exporter: Exporter
) -> Supervisord:
    """supervisord with two workers RUNNING and the exporter answering /healthz 200."""
    sup = start_supervisord(metrics_env)
    sup.wait_workers_running(2)
    exporter.wait_healthy(sup)
    return sup


# --- the database ---------------------------------------------------------------------------------


def pay_many(url: str, count: int, prefix: str, parallel: int = 5) -> list[dict[str, Any]]:
    """`count` payments through psql's create_payment_intent_sync, `parallel` at a time."""

    def one(i: int) -> dict[str, Any]:
        out = psql_ok(url, payment_sql(1000 + i, f"{prefix} {i}"))
        value: dict[str, Any] = json.loads(out, parse_float=Decimal)
        assert value["status"] == "pending", value
        return value

    with ThreadPoolExecutor(max_workers=parallel) as pool:
        return list(pool.map(one, range(count)))


def hold_scheduled_jobs(url: str, count: int) -> None:
    """Jobs of the payments queue due in an hour: waiting, never claimed during the test."""
    psql_ok(
        url,
        "INSERT INTO metadata.river_job (state, scheduled_at, args, kind, max_attempts, queue)"
        f" SELECT 'scheduled', now() + interval '1 hour',"
        f" jsonb_build_object('payment_id', gen_random_uuid()), '{KIND}', 5, '{QUEUE}'"
        f" FROM generate_series(1, {count})",
    )


def completed_jobs(url: str) -> int:
    return int(psql_ok(url, "SELECT count(*) FROM metadata.river_job WHERE state = 'completed'"))


def unfinished_jobs(url: str) -> dict[str, int]:
    """state -> count of the jobs not finalized."""
    out = psql_ok(
        url,
        "SELECT state, count(*) FROM metadata.river_job WHERE finalized_at IS NULL GROUP BY state",
    )
    return {state: int(n) for state, n in (line.split("|") for line in out.splitlines())}


# --- a throwaway prometheus server -------------------------------------------------------------


def prometheus_binary() -> Path:
    """$PW_PROMETHEUS_BINDIR/prometheus (`make test` exports it). Under CI=true its absence
    fails; locally the test is skipped only if no prometheus binary exists at all."""
    bindir = os.environ.get("PW_PROMETHEUS_BINDIR", "").strip()
    if bindir:
        path = Path(bindir) / "prometheus"
        if not path.is_file():
            pytest.fail(f"PW_PROMETHEUS_BINDIR={bindir} holds no prometheus binary")
        return path
    if os.environ.get("CI", "").strip().lower() in {"true", "1"}:
        pytest.fail(
            "PW_PROMETHEUS_BINDIR is not set (CI=true): run the tests through `make test`, or "
            "export PW_PROMETHEUS_BINDIR=$(scripts/ensure-prometheus.sh)"
        )
    found = shutil.which("prometheus")
    if found is None:
        pytest.skip(
            "no prometheus binary: export PW_PROMETHEUS_BINDIR=$(scripts/ensure-prometheus.sh) "
            "or run `make test`"
        )
    return Path(found)


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        if self.process.poll() is not None:
            pytest.fail(f"prometheus exited ({self.process.returncode}):\n{self.log.read_text()}")
        status, _, body = http_get(f"{self.url}{path}?{urllib.parse.urlencode(params)}")
        answer = json.loads(body)
        assert status == 200 and answer["status"] == "success", answer
        return answer["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        data = self.api("/api/v1/query", query=expr)
        assert data["resultType"] == "vector", data
        result: list[dict[str, Any]] = data["result"]
        return result

    def scalar(self, expr: str) -> float:
        """The value of an expression that must give exactly one series."""
        result = self.query(expr)
        assert len(result) == 1, f"{expr}: expected one series, got {result}"
        return float(result[0]["value"][1])

    def wait_scraped_after(self, moment: float, timeout: float = 15) -> None:
        """Waits for a scrape of the exporter that began after `moment` (time.time())."""

        def scraped() -> bool:
            result = self.query("timestamp(payment_worker_database_up)")
            return bool(result) and float(result[0]["value"][1]) > moment

        wait_until(scraped, timeout, "prometheus did not scrape the exporter again")


@pytest.fixture
def prometheus(tmp_path: Path, metrics_port: int) -> Iterator[Prometheus]:
    """Prometheus (Debian's package) scraping the exporter every second."""
    binary = prometheus_binary()
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        json.dumps(  # JSON is YAML
            {
                "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
                "scrape_configs": [
                    {
                        "job_name": SCRAPE_JOB,
                        "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
                    }
                ],
            }
        )
    )
    log_path = tmp_path / "prometheus.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    server = Prometheus(f"http://127.0.0.1:{port}", process, log_path)

    def ready() -> bool:
        if process.poll() is not None:
            pytest.fail(f"prometheus exited ({process.returncode}):\n{log_path.read_text()}")
        try:
            return http_get(server.url + "/-/ready")[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, 30, lambda: f"prometheus never got ready:\n{log_path.read_text()}")
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


# --- the tests ----------------------------------------------------------------------------------


@pytest.mark.timeout(90)
def test_prometheus_reads_queue_depth_stripe_latency_and_job_counts(
    prometheus: Prometheus,
    running: Supervisord,
    db_url: str,
    standin: StandinProcess,
) -> None:
    standin.admin.configure(latency_ms=int(STANDIN_LATENCY * 1000))
    hold_scheduled_jobs(db_url, 3)

    # A first payment, scraped, gives rate() a starting point below the rest.
    pay_many(db_url, 1, "first")
    wait_until(
        lambda: prometheus.query("payment_worker_stripe_request_duration_seconds_count"),
        30,
        lambda: f"prometheus never scraped a Stripe request:\n{prometheus.log.read_text()}",
    )
    pay_many(db_url, 29, "metered")

    moment = time.time()
    completed = completed_jobs(db_url)
    waiting = unfinished_jobs(db_url)
    prometheus.wait_scraped_after(moment)

    assert completed == 30
    assert waiting == {"scheduled": 3}
    assert prometheus.scalar(f'up{{job="{SCRAPE_JOB}"}}') == 1
    depth = prometheus.query("payment_worker_jobs")
    assert [
        (s["metric"]["queue"], s["metric"]["kind"], s["metric"]["state"], s["value"][1])
        for s in depth
    ] == [(QUEUE, KIND, "scheduled", "3")]
    assert prometheus.scalar("sum(payment_worker_jobs)") == sum(waiting.values())

    p99 = prometheus.scalar(
        "histogram_quantile(0.99, sum by (le) "
        "(rate(payment_worker_stripe_request_duration_seconds_bucket[1m])))"
    )
    # Every call waits 50 ms at the stand-in: p99 lies in the 0.05-0.1 s bucket, or a little
    # above on a busy machine; never below the latency, never in Stripe's timeout range.
    assert STANDIN_LATENCY <= p99 < 2.5, p99

    assert prometheus.scalar("sum(payment_worker_jobs_finished_total)") == completed
    assert (
        prometheus.scalar('sum(payment_worker_jobs_finished_total{outcome="completed"})')
        == completed
    )
    assert prometheus.scalar("payment_worker_workers_up") == 2


@pytest.mark.timeout(90)
def test_a_killed_worker_leaves_no_stale_or_double_counted_series(
    running: Supervisord, exporter: Exporter, db_url: str
) -> None:
    pay_many(db_url, 5, "before")
    before = exporter.scrape()
    finished = before.total("payment_worker_jobs_finished_total")
    assert finished == completed_jobs(db_url) == 5
    assert before.value("payment_worker_workers_up") == 2
    assert exporter.health()[0] == 200

    old_pid = rpc("getProcessInfo", "worker:worker-00")["pid"]
    os.kill(old_pid, signal.SIGKILL)

    # Scraped all along: from the kill until worker-00 is back and has beaten twice.
    seen: list[tuple[float, float]] = []

    def restarted() -> bool:
        scrape = exporter.scrape()
        ups = scrape.samples("payment_worker_workers_up")
        seen.append((sum(s.value for s in ups), scrape.total("payment_worker_jobs_finished_total")))
        info = running.workers("RUNNING").get("worker-00")
        return (
            info is not None
            and info["pid"] != old_pid
            and any(
                line["msg"] == "worker started" and line["pid"] == info["pid"]
                for line in running.json_lines()
            )
        )

    wait_until(restarted, 20, lambda: f"worker-00 was not restarted:\n{running.output()}")
    settle = time.monotonic() + 2.5
    while time.monotonic() < settle:
        restarted()
        time.sleep(0.1)
    assert max(up for up, _ in seen) <= 2, f"a dead worker still counted as up: {seen}"
    assert seen[-1][0] == 2
    assert {total for _, total in seen} == {finished}, "the finished total moved without a job"
    reaped = [
        line
        for line in running.json_lines()
        if line["msg"] == "dead worker's live gauges removed" and line["worker_pid"] == old_pid
    ]
    assert len(reaped) == 1, running.output()

    pay_many(db_url, 6, "after")
    after = exporter.scrape()
    assert after.total("payment_worker_jobs_finished_total") == finished + 6
    assert after.total("payment_worker_jobs_finished_total", outcome="completed") == 11
    assert completed_jobs(db_url) == 11
    assert after.value("payment_worker_workers_up") == 2
    status, report = exporter.health()
    assert (status, report["workers"]) == (200, "ok"), report

    rpc("stopProcessGroup", "worker")  # returns once every worker has stopped
    stopped = time.monotonic()
    assert running.workers("RUNNING") == {}

    def unhealthy() -> tuple[int, dict[str, Any]] | None:
        answer = exporter.health()
        return answer if answer[0] == 503 else None

    status, report = wait_until(
        unhealthy, HEARTBEAT_MAX_AGE + 2, "/healthz still answers 200 with no worker running"
    )
    waited = time.monotonic() - stopped
    assert waited <= HEARTBEAT_MAX_AGE, f"/healthz said 503 only after {waited:.1f} s"
    assert report["database"] == "ok", report
    assert report["workers"] != "ok", report
    idle = exporter.scrape()
    assert [s.value for s in idle.samples("payment_worker_workers_up")] in ([], [0.0])
    assert idle.samples("payment_worker_heartbeat_timestamp_seconds") == []
    assert idle.total("payment_worker_jobs_finished_total") == 11, "counters outlive workers"


# type of the family, and the sample names it has, for each kind of metric
_SUFFIXES = {GAUGE: ("",), COUNTER: ("_total",), HISTOGRAM: ("_bucket", "_count", "_sum")}


@pytest.mark.timeout(90)
def test_every_metric_of_the_contract_is_served_with_real_values(
    running: Supervisord, exporter: Exporter, db_url: str, standin: StandinProcess
) -> None:
    hold_scheduled_jobs(db_url, 2)
    # The first attempt's three requests fail (one try and two immediate
    # retries); the queue retries the job and its second attempt completes.
    # Unsaved 500s (save_5xx off), so each retry runs afresh; a saved 500 is replayed and
    # searched for instead (tests/integration/test_stripe_idempotency.py).
    standin.admin.configure(save_5xx=False)
    standin.admin.script([api_error()] * 3)
    pay_many(db_url, 4, "listed", parallel=1)
    assert standin.admin.script_pending() == 0
    scrape = exporter.scrape()
    now = time.time()

    assert scrape.content_type.startswith("text/plain; version=0.0.4"), scrape.content_type
    served = {f.name + ("_total" if f.type == COUNTER else "") for f in scrape.families.values()}
    assert served == set(CONTRACT)
    for family in scrape.families.values():
        name = family.name + ("_total" if family.type == COUNTER else "")
        kind, labels = CONTRACT[name]
        assert family.type == kind, family.name
        names = {name.removesuffix("_total") + suffix for suffix in _SUFFIXES[kind]}
        for sample in family.samples:
            assert sample.name in names, sample
            assert set(sample.labels) - {"le"} == labels, sample

    assert scrape.value("payment_worker_jobs", queue=QUEUE, kind=KIND, state="scheduled") == 2
    assert scrape.total("payment_worker_jobs") == sum(unfinished_jobs(db_url).values()) == 2
    assert scrape.value("payment_worker_oldest_available_job_age_seconds", queue=QUEUE) == 0
    assert scrape.value("payment_worker_payments_recent", status="pending") == 4
    assert scrape.value("payment_worker_database_up") == 1

    stripe = "payment_worker_stripe_request_duration_seconds"
    call = {"operation": "create_payment_intent"}
    assert scrape.value(stripe + "_count", **call, outcome="success") == 4
    assert scrape.value(stripe + "_count", **call, outcome="error") == 3
    assert scrape.value(stripe + "_bucket", **call, outcome="success", le="+Inf") == 4
    assert 0 < scrape.value(stripe + "_sum", **call, outcome="success") < 4 * 5
    assert {
        s.labels["type"]: s.value for s in scrape.samples("payment_worker_stripe_errors_total")
    } == {"APIError": 3}
    assert scrape.value("payment_worker_jobs_rescued_total", queue=QUEUE) == 0

    finished = {
        s.labels["outcome"]: s.value
        for s in scrape.samples("payment_worker_jobs_finished_total", kind=KIND)
    }
    assert finished == {"completed": 4, "retried": 1, "discarded": 0}
    job = "payment_worker_job_duration_seconds"
    assert scrape.value(job + "_count", kind=KIND, outcome="completed") == 4
    assert scrape.value(job + "_count", kind=KIND, outcome="retried") == 1
    assert scrape.value(job + "_sum", kind=KIND, outcome="completed") > 0

    latency = "payment_worker_payment_latency_seconds"
    assert scrape.value(latency + "_count") == 4
    assert scrape.value(latency + "_sum") > 0
    assert scrape.value(latency + "_bucket", le="+Inf") == 4

    assert scrape.value("payment_worker_workers_up") == 2
    beat = scrape.value("payment_worker_heartbeat_timestamp_seconds")
    assert now - HEARTBEAT_MAX_AGE < beat <= now, (beat, now)
