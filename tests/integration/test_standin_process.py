"""The stand-in as a process: CLI, STANDIN_* variables, signals, port file, log hygiene."""

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import stripe

from stripe_standin import StandinProcess, StandinStartError
from stripe_standin.client import StandinAdminError, scripted_error

ROOT = Path(__file__).resolve().parents[2]


def _client(url: str, key: str) -> stripe.StripeClient:
    return stripe.StripeClient(
        key, base_addresses={"api": url}, max_network_retries=0, http_client=stripe.RequestsClient()
    )


def test_api_key_from_environment_must_match_exactly() -> None:
    with StandinProcess(env={"STANDIN_API_KEY": "sk_test_only_this_one"}) as standin:
        with pytest.raises(stripe.AuthenticationError) as info:
            _client(standin.url, "sk_test_some_other_key").v1.payment_intents.retrieve("pi_x")
        assert "some_other" not in str(info.value.user_message)
        with pytest.raises(stripe.InvalidRequestError):  # authenticated: 404 for the id
            _client(standin.url, "sk_test_only_this_one").v1.payment_intents.retrieve("pi_x")


def test_log_has_one_line_per_request_and_no_secrets() -> None:
    key = "sk_test_mustnotleak9876"
    with StandinProcess() as standin:
        client = _client(standin.url, key)
        intent = client.v1.payment_intents.create({"amount": 500, "currency": "eur"})
        assert intent.client_secret is not None
        client.v1.payment_intents.retrieve(intent.id, {"client_secret": intent.client_secret})
        with pytest.raises(stripe.AuthenticationError):
            _client(standin.url, "sk_live_alsosecret1234").v1.payment_intents.retrieve(intent.id)
    assert standin.returncode == 0
    log = standin.log_text()
    for secret in (key, "mustnotleak", intent.client_secret, "alsosecret"):
        assert secret not in log
    api_lines = [line for line in log.splitlines() if " /v1/" in line]
    assert len(api_lines) == 3
    assert " POST /v1/payment_intents 200 " in api_lines[0]
    assert f" GET /v1/payment_intents/{intent.id} 200 " in api_lines[1]
    assert " 401 " in api_lines[2]
    assert log.splitlines()[-1] == "stopped"


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_clean_shutdown_on_signal(signum: signal.Signals) -> None:
    standin = StandinProcess(quiet=True).start()
    try:
        assert standin.pid is not None
        os.kill(standin.pid, signum)
        assert standin.wait(timeout=5) == 0
    finally:
        standin.stop()
    assert f"received {signum.name}, shutting down" in standin.log_text()


def test_fixed_port_and_port_file_from_environment(tmp_path: Path) -> None:
    port_file = tmp_path / "nested" / "standin.port"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "STANDIN_PORT": "0", "STANDIN_QUIET": "1"}
    env["STANDIN_PORT_FILE"] = str(port_file)
    process = subprocess.Popen(
        [sys.executable, "-m", "stripe_standin"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        deadline = time.monotonic() + 10
        while not port_file.exists():
            assert process.poll() is None, "stand-in exited before listening"
            assert time.monotonic() < deadline, "no port file after 10 s"
            time.sleep(0.01)
        port = int(port_file.read_text())
        assert 0 < port < 65536
        client = _client(f"http://127.0.0.1:{port}", "sk_test_portfile")
        assert client.v1.payment_intents.create({"amount": 50, "currency": "usd"}).amount == 50
    finally:
        process.terminate()
        _, stderr = process.communicate(timeout=5)
    assert process.returncode == 0
    assert b"POST /v1/payment_intents" not in stderr  # quiet: no per-request lines


def test_invalid_configuration_fails_fast_with_the_reason() -> None:
    with pytest.raises(StandinStartError) as info:
        StandinProcess(drop=0.7, fail_5xx=0.7).start()
    message = str(info.value)
    assert "exited with status 2" in message
    assert "must add up to at most 1" in message


def test_a_host_that_is_not_loopback_is_refused_without_allow_remote() -> None:
    with pytest.raises(StandinStartError) as info:
        StandinProcess(host="0.0.0.0").start()  # noqa: S104
    message = str(info.value)
    assert "exited with status 2" in message
    assert "refusing to bind '0.0.0.0', not a loopback address" in message
    assert "--allow-remote" in message


def test_allow_remote_binds_it() -> None:
    with StandinProcess(host="0.0.0.0", extra_args=["--allow-remote"]) as standin:  # noqa: S104
        assert standin.admin.health()
        assert "listening on http://0.0.0.0:" in standin.log_text()


def _read_until_closed(conn: socket.socket) -> bytes:
    received = b""
    while True:
        try:
            chunk = conn.recv(4096)
        except ConnectionResetError:
            return received
        if not chunk:
            return received
        received += chunk


@pytest.mark.parametrize(
    "sent",
    [b"", b"POST /_standin/script HTTP/1.1\r\nContent-Length: 100\r\n\r\n{"],
    ids=["silent", "stalls-mid-body"],
)
def test_an_idle_or_stalled_client_is_dropped(sent: bytes) -> None:
    with StandinProcess(extra_args=["--idle-timeout", "0.5"]) as standin:
        assert standin.port is not None
        with socket.create_connection(("127.0.0.1", standin.port)) as conn:
            conn.settimeout(10)  # only so that a server that never closes fails the test
            conn.sendall(sent)
            started = time.monotonic()
            assert _read_until_closed(conn) == b""
            assert time.monotonic() - started >= 0.4
        deadline = time.monotonic() + 5
        while "Request timed out" not in standin.log_text():
            assert time.monotonic() < deadline, standin.log_text()
            time.sleep(0.01)
        assert standin.admin.script_pending() == 0, "the half-sent script was not applied"
        intent = _client(standin.url, "sk_test_x").v1.payment_intents.create(
            {"amount": 500, "currency": "usd"}
        )
        assert intent.status == "requires_payment_method"


def test_a_scripted_header_cannot_split_the_response() -> None:
    with StandinProcess() as standin:
        evil = {**scripted_error(500, "api_error", "m"), "headers": {"X-A": "1\r\nSet-Cookie: s=1"}}
        with pytest.raises(StandinAdminError) as info:
            standin.admin.script([evil])
        assert info.value.status == 400
        assert "control or non-ASCII character" in info.value.message
        assert standin.admin.script_pending() == 0
        created = _client(standin.url, "sk_test_x").v1.payment_intents.create(
            {"amount": 500, "currency": "usd"}
        )
        headers = created.last_response.headers
        assert "Set-Cookie" not in headers and "X-A" not in headers
