"""The exporter against a real database: what /metrics and /healthz answer."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from metrics.collectors import build_registry
from metrics.config import ConfigError, ExporterConfig
from metrics.database import DatabaseReader
from metrics.server import ExporterApp, serve
from tests.integration.conftest import MakeRole, role_url
from tests.unit.test_metrics_multiprocess import run_worker_like


@pytest.fixture
def reader(database_url: str) -> Iterator[DatabaseReader]:
    r = DatabaseReader(database_url)
    yield r
    r.close()


def get(url: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:  # noqa: S310 - loopback only
            return response.status, response.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


@pytest.fixture
def exporter(reader: DatabaseReader, tmp_path: Path) -> Iterator[str]:
    app = ExporterApp(build_registry(reader, tmp_path), reader, tmp_path, heartbeat_max_age=30)
    server = serve(app, "127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def test_queue_and_payments_are_read_at_scrape_time(
    conn: psycopg.Connection, exporter: str
) -> None:
    conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
    kind = "'payments', 'create_payment_intent', '{}', 5"
    conn.execute(
        "INSERT INTO metadata.river_job"
        " (queue, kind, args, max_attempts, state, scheduled_at, finalized_at) VALUES"
        f" ({kind}, 'available', now() - interval '42 s', NULL),"
        f" ({kind}, 'retryable', now() + interval '1 min', NULL),"
        f" ({kind}, 'completed', now(), now())"
    )
    status, body = get(exporter + "/metrics")
    assert status == 200
    lines = body.splitlines()
    assert "payment_worker_database_up 1.0" in lines
    assert (
        'payment_worker_jobs{kind="create_payment_intent",queue="payments",state="available"} 2.0'
        in lines
    ), "the trigger's job and ours"
    assert (
        'payment_worker_jobs{kind="create_payment_intent",queue="payments",state="retryable"} 1.0'
        in lines
    )
    assert not any('state="completed"' in line for line in lines), "finalized jobs are left out"
    assert 'payment_worker_payments_recent{status="pending_intent"} 1.0' in lines
    (age,) = [x for x in lines if x.startswith("payment_worker_oldest_available_job_age")]
    assert 42 <= float(age.split()[-1]) < 60


def test_oldest_age_is_zero_when_nothing_waits(exporter: str) -> None:
    _, body = get(exporter + "/metrics")
    assert 'payment_worker_oldest_available_job_age_seconds{queue="payments"} 0.0' in body


def test_health_needs_a_live_worker(exporter: str, tmp_path: Path) -> None:
    status, body = get(exporter + "/healthz")
    assert status == 503
    assert json.loads(body) == {"database": "ok", "workers": "no live worker has reported"}
    run_worker_like(tmp_path)
    status, body = get(exporter + "/healthz")
    assert status == 200, body
    assert json.loads(body)["workers"] == "ok"


def test_unreachable_database_is_reported_not_raised(tmp_path: Path) -> None:
    reader = DatabaseReader("host=127.0.0.1 port=1 connect_timeout=2")
    app = ExporterApp(build_registry(reader, tmp_path), reader, tmp_path, heartbeat_max_age=30)
    run_worker_like(tmp_path)
    healthy, report = app.health()
    assert not healthy
    assert report["database"].startswith("unreachable")
    registry = build_registry(reader, tmp_path)
    assert registry.get_sample_value("payment_worker_database_up") == 0


def test_unknown_paths_are_404(exporter: str) -> None:
    assert get(exporter + "/")[0] == 404


def test_config_names_bad_values_without_secrets() -> None:
    with pytest.raises(ConfigError, match="DATABASE_URL is required"):
        ExporterConfig.from_env({})
    with pytest.raises(ConfigError, match="METRICS_PORT must be a port number"):
        ExporterConfig.from_env({"DATABASE_URL": "postgresql://x@h/d", "METRICS_PORT": "http"})
    with pytest.raises(ConfigError) as err:
        ExporterConfig.from_env({"DATABASE_URL": "host=x password=hunter2 ==="})
    assert "hunter2" not in str(err.value)
    config = ExporterConfig.from_env({"DATABASE_URL": "postgresql://u:pw@h/d"})
    assert (config.port, config.multiproc_dir) == (9187, None)
    assert config.host == "0.0.0.0"  # noqa: S104 - the default, scraped from outside a container
    assert "pw" not in repr(config).replace("multiproc", "")


@pytest.mark.parametrize("group", ["payment_worker", "payment_monitor"])
def test_the_exporter_reads_as_a_login_that_may_read_no_table(
    conn: psycopg.Connection, database_url: str, login_role: MakeRole, group: str
) -> None:
    """It shares the workers' DATABASE_URL, whose role reads no table: the aggregates are
    functions. A monitoring login (payment_monitor) reads them and may do nothing else."""
    conn.execute("INSERT INTO payments.transactions (amount, currency) VALUES (2500, 'USD')")
    url = role_url(database_url, login_role(group))
    reader = DatabaseReader(url)
    try:
        snapshot = reader.snapshot()
    finally:
        reader.close()
    assert snapshot.jobs == [("payments", "create_payment_intent", "available", 1)]
    assert [queue for queue, _ in snapshot.oldest_available] == ["payments"]
    assert snapshot.payments == [("pending_intent", 1)]
    refused = [
        "SELECT count(*) FROM metadata.river_job",
        "SELECT count(*) FROM payments.transactions",
    ]
    if group == "payment_monitor":
        refused.append("SELECT * FROM payments.job_claim(1, 'monitor')")
    with psycopg.connect(url, autocommit=True) as login:
        for statement in refused:
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                login.execute(statement)
