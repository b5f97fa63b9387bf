"""The webhook receiver as Stripe meets it: a real `python -m webhooks` (uvicorn) on a free
port, logged in as a member of payment_webhook, signatures checked by the real SDK."""

from __future__ import annotations

import http.client
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tests.integration.conftest import MakeRole, role_url
from tests.integration.rows import insert_payment
from tests.integration.waiting import wait_until
from tests.webhook_support import (
    LIVE_KEY,
    OLD_SECRET,
    SECRET,
    TEST_KEY,
    Receiver,
    body_of,
    event,
    intent,
    signature,
)

DB_PASSWORD_PROBE = "webhook-db-pw-Hq83Zt"
StartReceiver = Callable[..., Receiver]


@pytest.fixture
def webhook_login(login_role: MakeRole) -> str:
    return login_role("payment_webhook")


@pytest.fixture
def start_receiver(
    tmp_path: Path, database_url: str, webhook_login: str
) -> Iterator[StartReceiver]:
    """start_receiver(**env) -> a running receiver; stopped by SIGTERM at the end, exit 0."""
    started: list[Receiver] = []
    url = role_url(database_url, webhook_login).replace(
        f"{webhook_login}@", f"{webhook_login}:{DB_PASSWORD_PROBE}@"
    )

    def start(**env: str) -> Receiver:
        full = {
            "DATABASE_URL": url,
            "STRIPE_API_KEY": TEST_KEY,
            "STRIPE_WEBHOOK_SECRET": f"{SECRET},{OLD_SECRET}",
            "LOG_LEVEL": "DEBUG",
            **env,
        }
        n = len(started)
        receiver = Receiver(full, tmp_path / f"receiver-{n}.log", tmp_path / f"metrics-{n}")
        started.append(receiver)
        return receiver.start()

    yield start
    for receiver in started:
        assert receiver.stop() == 0, receiver.log()


@pytest.fixture
def receiver(start_receiver: StartReceiver) -> Receiver:
    return start_receiver()


def events_rows(conn: psycopg.Connection) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT id, type, outcome, payment_id, source, livemode, payload"
        " FROM payments.stripe_events ORDER BY received_at, id"
    ).fetchall()


def apply_jobs(conn: psycopg.Connection) -> list[dict[str, Any]]:
    cur = conn.cursor(row_factory=psycopg.rows.dict_row)
    return cur.execute(
        "SELECT id, args, state FROM metadata.river_job WHERE kind = 'apply_stripe_event'"
        " ORDER BY id"
    ).fetchall()


def assert_nothing_stored(conn: psycopg.Connection) -> None:
    assert events_rows(conn) == []
    assert apply_jobs(conn) == []


# --- accepted ---------------------------------------------------------------------------------


def test_a_signed_event_for_our_payment_is_stored_with_its_job_before_the_200(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    sent = event(intent(payment))
    answer = receiver.deliver(sent)
    assert answer.status == 200, answer
    assert answer.json() == {"received": True, "outcome": "stored"}
    assert answer.headers["content-type"] == "application/json"
    assert "server" not in {k.lower() for k in answer.headers}
    # The answer came after the commit: the row and its job are there the moment it did.
    [row] = events_rows(conn)
    assert row["id"] == sent["id"]
    assert (row["type"], row["outcome"], row["payment_id"]) == (sent["type"], "pending", payment)
    assert (row["source"], row["livemode"]) == ("webhook", False)
    assert row["payload"] == sent
    [job] = apply_jobs(conn)
    assert job["args"] == {"event_id": sent["id"], "payment_id": str(payment)}
    assert receiver.events() == {(sent["type"], "stored"): 1.0}
    assert receiver.rejections() == {}


def test_an_event_signed_with_any_of_the_rotated_secrets_is_accepted(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    for secret in (SECRET, OLD_SECRET):
        answer = receiver.deliver(event(intent(payment)), secret=secret)
        assert answer.status == 200, (secret, answer)
    # A header carrying two v1 signatures (Stripe's own during a rotation on its side).
    body = body_of(event(intent(payment)))
    t = int(time.time())
    both = (
        signature(body, "whsec_someone_elses", t) + "," + signature(body, SECRET, t).split(",")[1]
    )
    assert receiver.post(body, sig=both).status == 200
    assert [r["outcome"] for r in events_rows(conn)] == ["pending"] * 3
    assert len(apply_jobs(conn)) == 3


def test_a_duplicate_delivery_is_200_and_changes_nothing(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    sent = event(intent(payment), type="payment_intent.created")
    assert receiver.deliver(sent).json()["outcome"] == "stored"
    before = (events_rows(conn), apply_jobs(conn))
    # Stripe retries with a fresh timestamp; the body is the same event.
    again = receiver.deliver(sent, secret=OLD_SECRET)
    assert again.status == 200, again
    assert again.json() == {"received": True, "outcome": "duplicate"}
    assert (events_rows(conn), apply_jobs(conn)) == before
    assert len(before[0]) == 1 and len(before[1]) == 1
    assert receiver.events() == {
        ("payment_intent.created", "stored"): 1.0,
        ("payment_intent.created", "duplicate"): 1.0,
    }


def test_an_event_about_an_object_not_ours_is_recorded_as_ignored_without_a_job(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    insert_payment(conn)
    sent = event(intent(None), type="payment_intent.canceled")
    answer = receiver.deliver(sent)
    assert answer.status == 200, answer
    assert answer.json()["outcome"] == "ignored"
    [row] = events_rows(conn)
    assert (row["id"], row["outcome"], row["payment_id"]) == (sent["id"], "ignored", None)
    assert apply_jobs(conn) == []
    assert receiver.events() == {("payment_intent.canceled", "ignored"): 1.0}


# --- refused: nothing stored, counted, logged without secrets ---------------------------------


def test_bad_signatures_are_400_store_nothing_and_are_counted(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    sent = event(intent(payment))
    body = body_of(sent)

    # phase: a secret that is not ours
    answer = receiver.post(body, secret="whsec_not_the_endpoints")
    assert (answer.status, answer.json()) == (400, {"error": "invalid signature"})

    # phase: a body changed after signing
    sig = signature(body, SECRET)
    tampered = body.replace(b'"amount":2500', b'"amount":1')
    assert tampered != body
    assert receiver.post(tampered, sig=sig).status == 400

    # phase: no header, and a header that is not Stripe's shape
    answer = receiver.post(body, secret=None)
    assert (answer.status, answer.json()) == (400, {"error": "missing Stripe-Signature header"})
    assert receiver.post(body, sig="v1=deadbeef").status == 400
    assert receiver.post(body, sig=sig.replace("v1=", "v0=")).status == 400

    # phase: signed right, but long ago (a replay)
    answer = receiver.post(body, timestamp=int(time.time()) - 301)
    assert (answer.status, answer.json()["error"]) == (
        400,
        "signature timestamp outside the tolerance",
    )

    assert_nothing_stored(conn)
    assert receiver.rejections() == {"signature": 5.0, "stale": 1.0}
    assert receiver.events() == {}
    warnings = [line for line in receiver.log_lines() if line["msg"].startswith("webhook rejected")]
    # One line per reason per 10 s (a flood must not flood the log); the metric counts all.
    assert [w["reason"] for w in warnings] == ["signature", "stale"]
    log = receiver.log()
    for secret in (SECRET, OLD_SECRET, TEST_KEY, DB_PASSWORD_PROBE, sent["id"], str(payment)):
        assert secret not in log
    assert sig.split("v1=")[1] not in log


def test_an_event_of_the_other_mode_is_400(
    start_receiver: StartReceiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    test_mode = start_receiver()
    answer = test_mode.deliver(event(intent(payment), livemode=True))
    assert (answer.status, answer.json()) == (400, {"error": "a live event at a test endpoint"})
    live_mode = start_receiver(STRIPE_API_KEY=LIVE_KEY)
    answer = live_mode.deliver(event(intent(payment), livemode=False))
    assert (answer.status, answer.json()) == (400, {"error": "a test event at a live endpoint"})
    assert live_mode.deliver(event(intent(payment), livemode=True)).status == 200
    assert test_mode.rejections() == {"livemode": 1.0}
    assert live_mode.rejections() == {"livemode": 1.0}
    assert [r["livemode"] for r in events_rows(conn)] == [True]
    assert LIVE_KEY not in live_mode.log()


def test_wrong_method_content_type_or_shape_is_refused(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    payment = insert_payment(conn)
    body = body_of(event(intent(payment)))
    headers = {"Content-Type": "application/json", "Stripe-Signature": signature(body, SECRET)}

    # phase: methods
    for method in ("GET", "PUT", "DELETE"):
        answer = receiver.request(method, "/webhooks/stripe", body, headers)
        assert answer.status == 405, (method, answer)
        assert answer.headers["allow"] == "POST"

    # phase: content types
    for content_type in ("text/plain", "application/x-www-form-urlencoded", ""):
        answer = receiver.post(body, content_type=content_type)
        assert answer.status == 415, (content_type, answer)

    # phase: signed, but no event
    for bad in (b"{not json", b"[1,2]", b'{"object":"charge"}', b'{"object":"event","id":1}'):
        answer = receiver.post(bad)
        assert answer.status == 400, (bad, answer)
    # Valid JSON to Python, not to PostgreSQL, and an id the table refuses: still a 400.
    nan = body.replace(b'"amount":2500', b'"amount":NaN')
    assert receiver.post(nan).status == 400
    bad_id = body_of(event(intent(payment), event_id="evt_has spaces"))
    assert receiver.post(bad_id).status == 400

    # phase: elsewhere
    assert receiver.request("POST", "/webhooks/other", body, headers).status == 404

    assert_nothing_stored(conn)
    assert receiver.rejections() == {"method": 3.0, "content_type": 3.0, "malformed": 6.0}


def test_a_body_over_1_mib_is_413_without_being_read_whole(
    receiver: Receiver, conn: psycopg.Connection
) -> None:
    big = b'{"object":"event","pad":"' + b"x" * (1024 * 1024) + b'"}'
    # phase: declared too large: answered from the headers alone, before any body is sent
    with socket.create_connection(("127.0.0.1", receiver.port), timeout=10) as raw:
        raw.sendall(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            + f"Content-Length: {len(big)}\r\n".encode()
            + b"Stripe-Signature: "
            + signature(big, SECRET).encode()
            + b"\r\n\r\n"
        )
        head = raw.recv(65536)
    assert head.startswith(b"HTTP/1.1 413 "), head

    # phase: chunked, no length: counted as it arrives
    def chunks() -> Iterator[bytes]:
        for start in range(0, len(big), 64 * 1024):
            yield big[start : start + 64 * 1024]

    conn_http = http.client.HTTPConnection("127.0.0.1", receiver.port, timeout=10)
    try:
        conn_http.request(
            "POST",
            "/webhooks/stripe",
            body=chunks(),
            headers={"Content-Type": "application/json", "Stripe-Signature": "t=1,v1=00"},
            encode_chunked=True,
        )
        response = conn_http.getresponse()
        assert response.status == 413
    except (BrokenPipeError, ConnectionResetError):
        pass  # the server answered and closed while the rest was still being sent
    finally:
        conn_http.close()
    assert_nothing_stored(conn)
    wait_until(lambda: receiver.rejections() == {"body_too_large": 2.0}, what="two 413s counted")


@pytest.mark.timeout(60)
def test_slow_clients_are_cut_off(receiver: Receiver, conn: psycopg.Connection) -> None:
    """A client that never finishes its headers, or its body, is disconnected (10 s each)."""
    with (
        socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as headers_only,
        socket.create_connection(("127.0.0.1", receiver.port), timeout=30) as half_body,
    ):
        headers_only.sendall(b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\n")
        half_body.sendall(
            b"POST /webhooks/stripe HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100\r\n\r\n{"
        )
        assert headers_only.recv(1024) == b""  # closed without an answer
        answer = half_body.recv(65536)
        assert answer.startswith(b"HTTP/1.1 408 "), answer
    assert_nothing_stored(conn)
    assert receiver.rejections() == {"timeout": 1.0}


# --- the database ----------------------------------------------------------------------------


def test_while_the_database_refuses_it_is_503_and_a_retry_after_recovery_is_stored(
    receiver: Receiver, conn: psycopg.Connection, webhook_login: str
) -> None:
    payment = insert_payment(conn)
    assert receiver.request("GET", "/healthz").status == 200
    sent = event(intent(payment))
    role = sql.Identifier(webhook_login)

    # phase: outage — the login may not connect and its sessions are ended
    conn.execute(sql.SQL("ALTER ROLE {} NOLOGIN").format(role))
    conn.execute(
        "SELECT pg_terminate_backend(pid, 5000) FROM pg_stat_activity WHERE usename = %s",
        (webhook_login,),
    )
    answer = receiver.deliver(sent)
    assert answer.status == 503, answer
    assert answer.headers["retry-after"] == "5"
    assert answer.json() == {"error": "temporarily unable to record the event"}
    assert receiver.request("GET", "/healthz").status == 503
    assert_nothing_stored(conn)

    # phase: recovery — Stripe's retry of the same event is stored, once
    conn.execute(sql.SQL("ALTER ROLE {} LOGIN").format(role))
    wait_until(
        lambda: receiver.request("GET", "/healthz").status == 200, 30, "healthz after recovery"
    )
    answer = receiver.deliver(sent)
    assert (answer.status, answer.json()["outcome"]) == (200, "stored")
    assert [r["id"] for r in events_rows(conn)] == [sent["id"]]
    assert len(apply_jobs(conn)) == 1
    errors = [line for line in receiver.log_lines() if line["level"] == "ERROR"]
    assert errors and errors[0]["msg"].startswith("cannot record the event")
    assert DB_PASSWORD_PROBE not in receiver.log()
    codes = {
        dict(k)["code"] for k in receiver.samples("payment_worker_webhook_request_seconds_count")
    }
    assert {"200", "503"} <= codes


def test_sigterm_stops_it_with_status_0(receiver: Receiver) -> None:
    assert receiver.request("GET", "/healthz").json() == {"database": "ok"}
    assert receiver.stop() == 0
    assert receiver.log_lines()[-1]["msg"] == "receiver stopped"


def waiting_on_a_lock(conn: psycopg.Connection, login: str, count: int) -> bool:
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_activity WHERE usename = %s AND wait_event_type = 'Lock'",
        (login,),
    ).fetchone()
    return row is not None and row[0] == count


def test_a_delivery_in_hand_at_sigterm_is_finished_and_answered_before_it_exits(
    receiver: Receiver, conn: psycopg.Connection, database_url: str, webhook_login: str
) -> None:
    payment = insert_payment(conn)
    sent = event(intent(payment))
    answers: list[Any] = []
    with psycopg.connect(database_url) as blocker:
        # Another transaction holds the event's id: the receiver's insert waits for it.
        blocker.execute(
            "SELECT payments.stripe_event_record(%s::jsonb, 'backfill')", (body_of(sent).decode(),)
        )
        delivery = threading.Thread(target=lambda: answers.append(receiver.deliver(sent)))
        delivery.start()
        wait_until(lambda: waiting_on_a_lock(conn, webhook_login, 1), 10, "the insert waits")
        assert receiver.process is not None
        receiver.process.send_signal(signal.SIGTERM)
        wait_until(
            lambda: any(line["msg"] == "Shutting down" for line in receiver.log_lines()),
            10,
            "uvicorn's shutdown began",
        )
        blocker.rollback()  # the id is free again: the receiver's own insert goes ahead
    delivery.join(15)
    [answer] = answers
    assert (answer.status, answer.json()["outcome"]) == (200, "stored")
    assert receiver.stop() == 0
    assert [(r["id"], r["source"]) for r in events_rows(conn)] == [(sent["id"], "webhook")]
    assert len(apply_jobs(conn)) == 1


def test_two_deliveries_of_one_event_at_once_store_it_once(
    receiver: Receiver, conn: psycopg.Connection, database_url: str, webhook_login: str
) -> None:
    payment = insert_payment(conn)
    sent = event(intent(payment))
    answers: list[Any] = []
    with psycopg.connect(database_url) as holder:
        # Hold the table so that both deliveries are in the database at once.
        holder.execute("LOCK TABLE payments.stripe_events IN SHARE MODE")
        threads = [
            threading.Thread(target=lambda s=s: answers.append(receiver.deliver(sent, secret=s)))
            for s in (SECRET, OLD_SECRET)
        ]
        for thread in threads:
            thread.start()
        wait_until(lambda: waiting_on_a_lock(conn, webhook_login, 2), 10, "both wait")
        holder.commit()
    for thread in threads:
        thread.join(15)
    assert sorted((a.status, a.json()["outcome"]) for a in answers) == [
        (200, "duplicate"),
        (200, "stored"),
    ]
    assert len(events_rows(conn)) == 1
    assert len(apply_jobs(conn)) == 1


# --- configuration -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"STRIPE_WEBHOOK_SECRET": ""},
            "invalid configuration: STRIPE_WEBHOOK_SECRET is not set",
        ),
        (
            {"STRIPE_WEBHOOK_SECRET": f"{SECRET},sk_test_oops"},
            "invalid configuration: STRIPE_WEBHOOK_SECRET: secret number 2 of 2 is not",
        ),
        ({"WEBHOOK_PORT": "http"}, "invalid configuration: WEBHOOK_PORT must be a whole number"),
    ],
)
def test_a_bad_configuration_is_one_line_and_exit_78(
    tmp_path: Path, database_url: str, env: dict[str, str], message: str
) -> None:
    full = {
        "DATABASE_URL": database_url,
        "STRIPE_API_KEY": TEST_KEY,
        "STRIPE_WEBHOOK_SECRET": SECRET,
        **env,
    }
    receiver = Receiver(full, tmp_path / "receiver.log", tmp_path / "metrics")
    # Not under supervisord: it says why and exits, with nothing to stop it.
    receiver.env.update(env)
    result = subprocess.run(
        [sys.executable, "-m", "webhooks"],
        env=receiver.env,
        cwd=Path(__file__).resolve().parents[2],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 78, result
    [line] = result.stdout.splitlines()
    assert message in line
    assert "sk_test_oops" not in line and SECRET not in line
