"""The receiver as supervisord.conf runs it: stopped (and saying why) without a signing
secret while everything else works; with one, a signed delivery is stored and counted on the
exporter's /metrics, as its own least-privileged login."""

from __future__ import annotations

import http.client
import json
import re
import socket
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import pg
from tests.acceptance.conftest import (
    API_KEY,
    DB_PASSWORD,
    StartSupervisord,
    Supervisord,
    free_port,
    login_role,
    payment_sql,
    psql_ok,
    session_roles,
    wait_until,
)
from tests.deploy.deployfiles import COUNTER, RECEIVER_CONTRACT
from tests.webhook_support import SECRET, body_of, event, signature

pytestmark = pytest.mark.acceptance


def program(sup: Supervisord, name: str) -> dict[str, Any]:
    return next((p for p in sup.processes() if p["name"] == name), {})


def spawned(sup: Supervisord, name: str) -> list[int]:
    pids = []
    for line in sup.supervisord_lines():
        match = re.search(r"spawned: '([^']+)' with pid (\d+)", line)
        if match and match.group(1) == name:
            pids.append(int(match.group(2)))
    return pids


def scrape(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return {f.name: f for f in text_string_to_metric_families(response.read().decode())}


@pytest.fixture
def webhook_login(database_url: str) -> Iterator[str]:
    with login_role(database_url, "pw_hook", ("payment_webhook",)) as name:
        yield name


@pytest.mark.timeout(90)
def test_without_a_secret_it_says_so_once_and_stays_stopped_while_the_rest_runs(
    start_supervisord: StartSupervisord, worker_env: dict[str, str], db_url: str
) -> None:
    assert "STRIPE_WEBHOOK_SECRET" not in worker_env
    sup = start_supervisord(worker_env)
    wait_until(
        lambda: re.search(r"stopped: webhooks \(exit status 78\)", sup.output()),
        30,
        lambda: f"webhooks did not stop itself:\n{sup.output()}",
    )
    # No sleep to prove no restart follows: supervisord restarts only a process that
    # exited on its own, never one it stopped on the process's request, as here.
    assert program(sup, "webhooks")["statename"] == "STOPPED"
    [pid] = spawned(sup, "webhooks")
    [line] = [line for line in sup.json_lines() if line["pid"] == pid]
    assert line["level"] == "CRITICAL"
    assert line["msg"].startswith("invalid configuration: STRIPE_WEBHOOK_SECRET is not set")
    # Everything else works as before.
    sup.wait_workers_running(2)
    wait_until(lambda: program(sup, "metrics").get("statename") == "RUNNING", 20, "metrics running")
    paid = json.loads(psql_ok(db_url, payment_sql(2500, "no webhooks here")))
    assert paid["status"] == "pending"
    output = sup.output()
    assert API_KEY not in output and DB_PASSWORD not in output


@pytest.mark.timeout(90)
def test_with_a_secret_a_signed_event_is_stored_and_counted_on_the_exporter(
    start_supervisord: StartSupervisord,
    worker_env: dict[str, str],
    db_url: str,
    webhook_login: str,
    pw_database: Any,
) -> None:
    port = free_port()
    env = {
        **worker_env,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        "WEBHOOK_DATABASE_URL": pg.url(
            pw_database.info.dbname, user=webhook_login, password=DB_PASSWORD
        ),
        "WEBHOOK_HOST": "127.0.0.1",
        "WEBHOOK_PORT": str(port),
    }
    sup = start_supervisord(env)
    sup.wait_workers_running(2)

    def listening() -> bool:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            return False

    wait_until(listening, 20, lambda: f"the receiver does not listen:\n{sup.output()}")
    assert program(sup, "webhooks")["statename"] == "RUNNING"

    paid = json.loads(psql_ok(db_url, payment_sql(2500, "told by webhook")))
    intent = {
        # The RPC hands out the client secret, pi_…_secret_…: the intent's id is its head.
        "id": paid["client_secret"].split("_secret_")[0],
        "object": "payment_intent",
        "metadata": {"payment_id": paid["payment_id"]},
    }
    body = body_of(event(intent, type="payment_intent.succeeded"))

    def deliver(secret: str) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body, secret)}
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
        try:
            conn.request("POST", "/webhooks/stripe", body=body, headers=headers)
            answer = conn.getresponse()
            return answer.status, json.loads(answer.read())
        finally:
            conn.close()

    assert deliver("whsec_an_old_one") == (400, {"error": "invalid signature"})
    assert deliver(SECRET) == (200, {"received": True, "outcome": "stored"})

    # The workers run too: the stored event may already be applied when we look, so wait
    # for that, the end of its path, rather than race them for "pending".
    def stored() -> str:
        return psql_ok(db_url, "SELECT outcome || ' ' || payment_id FROM payments.stripe_events")

    wait_until(
        lambda: stored() == f"applied {paid['payment_id']}",
        20,
        lambda: f"the event is not applied: {stored()!r}\n{sup.output()}",
    )
    assert session_roles(db_url).get("payment-worker webhooks") == {webhook_login}

    families = scrape(int(worker_env["METRICS_PORT"]))
    for name, (kind, labels) in RECEIVER_CONTRACT.items():
        family = families[name.removesuffix("_total") if kind == COUNTER else name]
        assert family.type == kind
        for sample in family.samples:
            assert set(sample.labels) - {"le"} == labels, sample
    [events] = families["payment_worker_webhook_events"].samples
    assert events.labels == {"type": "payment_intent.succeeded", "outcome": "stored"}
    assert events.value == 1
    [refused] = families["payment_worker_webhook_rejections"].samples
    assert (refused.labels, refused.value) == ({"reason": "signature"}, 1)
    output = sup.output()
    assert SECRET not in output and DB_PASSWORD not in output and API_KEY not in output
