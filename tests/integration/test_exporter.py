"""The exporter against a real database: what /metrics and /healthz answer."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from uuid import UUID

import psycopg
import pytest
from psycopg.types.json import Json

from metrics.collectors import build_registry
from metrics.config import ConfigError, ExporterConfig
from metrics.database import DatabaseReader
from metrics.server import ExporterApp, ExporterServer, serve
from tests.integration.conftest import MakeRole, role_url
from tests.integration.rows import insert_payment
from tests.integration.waiting import wait_until
from tests.unit.test_metrics_multiprocess import run_worker_like

ROOT = Path(__file__).resolve().parents[2]


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


StartExporter = Callable[..., ExporterServer]


@pytest.fixture
def start_exporter(reader: DatabaseReader, tmp_path: Path) -> Iterator[StartExporter]:
    """start_exporter(**serve_kwargs) -> a serving ExporterServer on 127.0.0.1."""
    servers: list[ExporterServer] = []

    def start(**kwargs: float) -> ExporterServer:
        registry = build_registry(reader, tmp_path)
        app = ExporterApp(registry, reader, tmp_path, heartbeat_max_age=30)
        server = serve(app, "127.0.0.1", 0, **kwargs)  # type: ignore[arg-type]
        servers.append(server)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture
def exporter(start_exporter: StartExporter) -> str:
    return f"http://127.0.0.1:{start_exporter().server_port}"


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
    assert "payment_worker_oldest_unapplied_event_age_seconds 0.0" in body.splitlines()
    assert "payment_worker_stripe_events_unapplied 0.0" in body.splitlines()


def test_unapplied_events_and_open_payments_are_read_at_scrape_time(
    conn: psycopg.Connection, exporter: str
) -> None:
    payment_id = insert_payment(conn)
    conn.execute(
        "UPDATE payments.transactions SET status = 'processing', provider_payment_id = 'pi_1',"
        " provider_client_secret = 'pi_1_secret_x' WHERE id = %s",
        (payment_id,),
    )
    insert_payment(conn)
    for n, (age, outcome) in enumerate([("90 s", "pending"), ("10 s", "pending"), ("1 h", None)]):
        event = {
            "id": f"evt_{n}",
            "object": "event",
            "type": "payment_intent.processing",
            "created": 1764600000,
            "livemode": False,
            "data": {"object": {"object": "payment_intent", "id": "pi_1"}},
        }
        conn.execute("SELECT payments.stripe_event_record(%s::jsonb, 'webhook')", (Json(event),))
        conn.execute(
            "UPDATE payments.stripe_events SET received_at = now() - %s::interval,"
            " outcome = coalesce(%s, 'applied'),"
            " processed_at = CASE WHEN %s::text IS NULL THEN now() END WHERE id = %s",
            (age, outcome, outcome, event["id"]),
        )
    _, body = get(exporter + "/metrics")
    lines = body.splitlines()
    assert "payment_worker_stripe_events_unapplied 2.0" in lines
    (age_line,) = [x for x in lines if x.startswith("payment_worker_oldest_unapplied_event_age")]
    assert 90 <= float(age_line.split()[-1]) < 120
    for status, count in [
        ("pending_intent", 1),
        ("pending", 0),
        ("processing", 1),
        ("requires_capture", 0),
    ]:
        assert f'payment_worker_payments_open{{status="{status}"}} {count}.0' in lines


def authorized(conn: psycopg.Connection, capture_before: str | None) -> UUID:
    """A manual-capture payment waiting for capture, its deadline `capture_before` from now."""
    row = conn.execute(
        "INSERT INTO payments.transactions (amount, currency, capture_method)"
        " VALUES (2500, 'USD', 'manual') RETURNING id"
    ).fetchone()
    assert row is not None
    payment_id: UUID = row[0]
    conn.execute(
        "UPDATE payments.transactions SET status = 'requires_capture',"
        " provider_payment_id = 'pi_' || replace(id::text, '-', ''),"
        " provider_client_secret = 'pi_x_secret_' || replace(id::text, '-', ''),"
        " amount_capturable = amount,"
        " capture_before = now() + %s::interval WHERE id = %s",
        (capture_before, payment_id),
    )
    return payment_id


def test_expiring_authorisations_and_open_refunds_are_read_at_scrape_time(
    conn: psycopg.Connection, exporter: str
) -> None:
    _, body = get(exporter + "/metrics")
    lines = body.splitlines()
    assert "payment_worker_authorizations_expiring 0.0" in lines
    assert "payment_worker_authorization_expiry_seconds 0.0" in lines, "a series even with none"
    for status in ("pending_refund", "pending", "requires_action"):
        assert f'payment_worker_refunds_open{{status="{status}"}} 0.0' in lines

    authorized(conn, "5 hours")
    authorized(conn, "23 hours")
    authorized(conn, "3 days")  # not yet within the day
    captured = authorized(conn, "1 hour")
    conn.execute("UPDATE payments.transactions SET status = 'succeeded' WHERE id = %s", (captured,))
    paid = insert_payment(conn)
    conn.execute(
        "UPDATE payments.transactions SET status = 'succeeded', provider_payment_id = 'pi_paid',"
        " provider_client_secret = 'pi_paid_secret_x' WHERE id = %s",
        (paid,),
    )
    for n, status in enumerate(["pending", "pending", "requires_action", "succeeded", "failed"]):
        conn.execute(
            "INSERT INTO payments.refunds (id, payment_id, amount, currency, status,"
            " provider_refund_id, source) VALUES (gen_random_uuid(), %s, 100, 'USD', %s, %s,"
            " 'stripe')",
            (paid, status, f"re_{n}"),
        )
    conn.execute(
        "INSERT INTO payments.refunds (id, payment_id, amount, currency, source, requested_role)"
        " VALUES (gen_random_uuid(), %s, 100, 'USD', 'rpc', 'payment_operator')",
        (paid,),
    )

    _, body = get(exporter + "/metrics")
    lines = body.splitlines()
    assert "payment_worker_authorizations_expiring 2.0" in lines
    (soonest,) = [x for x in lines if x.startswith("payment_worker_authorization_expiry_seconds ")]
    assert 5 * 3600 - 120 < float(soonest.split()[-1]) <= 5 * 3600
    for status, count in [("pending_refund", 1), ("pending", 2), ("requires_action", 1)]:
        assert f'payment_worker_refunds_open{{status="{status}"}} {count}.0' in lines
    assert not any('refunds_open{status="succeeded"' in x for x in lines), "final ones are left out"


def test_health_needs_a_live_worker(exporter: str, tmp_path: Path) -> None:
    status, body = get(exporter + "/healthz")
    assert status == 503
    assert json.loads(body) == {
        "database": "ok",
        "workers": "no live worker has reported",
        "loops": "ok",
    }
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
    assert config.host == "127.0.0.1", "loopback unless METRICS_HOST says otherwise"
    assert ExporterConfig.from_env(
        {"DATABASE_URL": "postgresql://u@h/d", "METRICS_HOST": " "}
    ).host == ("127.0.0.1")
    assert "pw" not in repr(config).replace("multiproc", "")


def read_until_closed(conn: socket.socket) -> bytes:
    """Everything the server sends until it closes the connection (a reset counts)."""
    received = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


def test_an_idle_connection_is_closed_after_the_timeout(start_exporter: StartExporter) -> None:
    server = start_exporter(request_timeout=0.5)
    with socket.create_connection(("127.0.0.1", server.server_port)) as idle:
        idle.settimeout(10)  # only so that a server that never closes fails the test
        started = time.monotonic()
        assert read_until_closed(idle) == b"", "closed without an answer: no request came"
        assert time.monotonic() - started >= 0.4
    status, _ = get(f"http://127.0.0.1:{server.server_port}/metrics")
    assert status == 200, "the server still serves after dropping an idle client"


def test_idle_connections_do_not_grow_the_threads_without_bound(
    start_exporter: StartExporter,
) -> None:
    server = start_exporter(request_timeout=60, max_connections=4)
    url = f"http://127.0.0.1:{server.server_port}/metrics"
    before = threading.active_count()
    idle = [socket.create_connection(("127.0.0.1", server.server_port)) for _ in range(40)]
    try:
        for conn in idle:
            conn.settimeout(10)
        # The first four hold every slot; each one after them is turned away at once.
        for conn in idle[4:]:
            assert read_until_closed(conn) == b""
        assert threading.active_count() <= before + 4
        with pytest.raises(OSError):  # a fifth client is turned away while four idle hold on
            get(url)
    finally:
        for conn in idle:
            conn.close()
    wait_until(lambda: get(url)[0] == 200, 10, "slots freed once the idle clients left")
    assert threading.active_count() <= before + 4


def test_the_exporter_process_binds_loopback_by_default(database_url: str, tmp_path: Path) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "PYTHONPATH": str(ROOT),
        "DATABASE_URL": database_url,
        "METRICS_PORT": str(port),
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "metrics"),
    }
    log = tmp_path / "exporter.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "metrics"], env=env, stdout=out, stderr=subprocess.STDOUT
        )
    try:
        wait_until(lambda: "serving /metrics" in log.read_text(), 10, "the exporter's start")
        assert listening_addresses(port) == {"127.0.0.1"}
        assert get(f"http://127.0.0.1:{port}/metrics")[0] == 200
    finally:
        process.terminate()
        assert process.wait(10) == 0, log.read_text()


def listening_addresses(port: int) -> set[str]:
    """The IPv4 and IPv6 addresses some process listens on at `port`, from /proc/net."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, _, hex_port = local.partition(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                packed = bytes.fromhex(address)
                if len(packed) == 4:
                    found.add(socket.inet_ntop(socket.AF_INET, packed[::-1]))
                else:
                    words = b"".join(packed[i : i + 4][::-1] for i in range(0, 16, 4))
                    found.add(socket.inet_ntop(socket.AF_INET6, words))
    return found


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
    assert (snapshot.events_unapplied, snapshot.oldest_unapplied_event_age) == (0, 0.0)
    assert dict(snapshot.payments_open)["pending_intent"] == 1
    assert (snapshot.authorizations_expiring, snapshot.authorization_expiry_seconds) == (0, 0.0)
    assert dict(snapshot.refunds_open) == {"pending_refund": 0, "pending": 0, "requires_action": 0}
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
