"""A payment followed to its end by the real processes: created with psql, paid with a test
card through the stand-in's customer CLI, and read `succeeded` — told by Stripe's webhook
through the receiver, or, with webhooks off, found by reconciliation alone."""

from __future__ import annotations

import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from stripe_standin.process import StandinProcess
from tests import pg
from tests.acceptance.conftest import (
    DB_PASSWORD,
    ROOT,
    StartSupervisord,
    Supervisord,
    base_env,
    free_port,
    login_role,
    payment_sql,
    psql_ok,
    wait_until,
)

pytestmark = pytest.mark.acceptance

PAY = (sys.executable, "-m", "stripe_standin", "pay")


@pytest.fixture
def webhook_db_url(database_url: str, pw_database: psycopg.Connection) -> Iterator[str]:
    """This test's database as a login only in payment_webhook: the receiver's."""
    with login_role(database_url, "pw_life", ("payment_webhook",)) as name:
        yield pg.url(pw_database.info.dbname, user=name, password=DB_PASSWORD)


def create_payment(db_url: str) -> dict[str, Any]:
    [line] = [ln for ln in psql_ok(db_url, payment_sql(2500, "lifecycle")).splitlines() if ln]
    payment: dict[str, Any] = json.loads(line)
    assert payment["status"] == "pending"
    return payment


def pay(standin: StandinProcess, payment_id: str, card: str = "pm_card_visa") -> str:
    """`python -m stripe_standin pay`, as make run prints it."""
    paid = subprocess.run(
        [*PAY, "--api-base", standin.url, payment_id, "--card", card],
        cwd=ROOT,
        env={**base_env(), "STRIPE_API_KEY": "sk_test_customer"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert paid.returncode == 0, paid.stderr
    return paid.stdout


def read_succeeded(db_url: str, payment_id: str) -> dict[str, Any] | None:
    found: dict[str, Any] = json.loads(
        psql_ok(db_url, f"SELECT get_payment('{payment_id}')"), parse_float=Decimal
    )
    return found if found["status"] == "succeeded" else None


def lifecycle_facts(db_url: str, payment_id: str) -> tuple[set[tuple[str, str]], int]:
    """((source, type) of the payment's events, its sync_payment jobs)."""
    with psycopg.connect(db_url, autocommit=True) as conn:
        sources = {
            (row[0], row[1])
            for row in conn.execute(
                "SELECT source, type FROM payments.stripe_events WHERE payment_id = %s",
                (payment_id,),
            )
        }
        syncs = conn.execute(
            "SELECT count(*) FROM metadata.river_job"
            " WHERE kind = 'sync_payment' AND args ->> 'payment_id' = %s",
            (payment_id,),
        ).fetchone()
    return sources, int(syncs[0]) if syncs else 0


def start(
    start_supervisord: StartSupervisord,
    worker_env: dict[str, str],
    extra: dict[str, str],
) -> Supervisord:
    sup = start_supervisord({**worker_env, **extra})
    sup.wait_workers_running(2)
    return sup


def test_a_payment_paid_with_a_test_card_is_succeeded_by_the_webhook_alone(
    start_supervisord: StartSupervisord,
    worker_env: dict[str, str],
    standin: StandinProcess,
    db_url: str,
    webhook_db_url: str,
) -> None:
    port = free_port()
    secret = "whsec_" + secrets.token_hex(24)
    standin.admin.configure_webhooks(
        url=f"http://127.0.0.1:{port}/webhooks/stripe", secret=secret, retry_base_seconds=0.5
    )
    sup = start(
        start_supervisord,
        worker_env,
        {
            "WEBHOOK_DATABASE_URL": webhook_db_url,
            "STRIPE_WEBHOOK_SECRET": secret,
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(port),
            # Reconciliation would wait an hour: only the webhook can tell the database.
            "RECONCILE_AFTER": "3600",
        },
    )
    payment = create_payment(db_url)
    assert "succeeded" in pay(standin, payment["payment_id"])
    paid = wait_until(
        lambda: read_succeeded(db_url, payment["payment_id"]), 30, lambda: sup.output()[-4000:]
    )
    assert paid["provider_status"] == "succeeded"
    assert paid["amount_received"] == Decimal("25.00")
    assert paid["last_payment_error"] is None or paid["last_payment_error"]["code"] is None
    sources, syncs = lifecycle_facts(db_url, payment["payment_id"])
    assert ("webhook", "payment_intent.succeeded") in sources
    assert {source for source, _ in sources} == {"webhook"} and syncs == 0
    assert secret not in sup.output()


def test_with_webhooks_off_reconciliation_alone_brings_the_payment_to_succeeded(
    start_supervisord: StartSupervisord,
    worker_env: dict[str, str],
    standin: StandinProcess,
    db_url: str,
) -> None:
    # No receiver (no secret: it stays stopped) and a stand-in that sends nothing.
    standin.admin.configure_webhooks(enabled=False)
    sup = start(start_supervisord, worker_env, {"RECONCILE_AFTER": "1"})
    payment = create_payment(db_url)
    assert "succeeded" in pay(standin, payment["payment_id"])
    paid = wait_until(
        lambda: read_succeeded(db_url, payment["payment_id"]), 30, lambda: sup.output()[-4000:]
    )
    assert paid["amount_received"] == Decimal("25.00")
    sources, syncs = lifecycle_facts(db_url, payment["payment_id"])
    # The leader's first backfill pass, at its start, may have read payment_intent.created;
    # no event can have said succeeded.
    assert not {t for _, t in sources} - {"payment_intent.created"}, sources
    assert syncs >= 1
