"""The stand-in's network hardening, without a socket: scripted headers that could split a
response are refused in Stripe's error shape and change nothing; a host that is not
loopback is refused unless --allow-remote says so."""

from __future__ import annotations

import json
from typing import Any

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Request, StandinApp
from stripe_standin.config import StandinConfig, is_loopback, load_config
from stripe_standin.faults import ConfigError

GOOD = {"status": 500, "error": {"type": "api_error", "message": "m"}}


def script(admin: Admin, *responses: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    body = json.dumps({"responses": list(responses)}).encode()
    reply = admin.handle(Request("POST", "/_standin/script", body=body))
    return reply.status, json.loads(reply.body)


def with_headers(headers: dict[str, str]) -> dict[str, Any]:
    return {**GOOD, "headers": headers}


@pytest.mark.parametrize(
    "headers",
    [
        {"X-Evil": "a\r\nSet-Cookie: session=stolen"},  # response splitting
        {"X-Evil": "a\nb"},
        {"X-Evil": "a\rb"},
        {"X-Evil": "a\x00b"},
        {"X-Evil": "bell\x07"},
        {"X-Evil": "del\x7f"},
        {"X-Evil": "caf\u00e9"},
        {"X-Evil\r\nSet-Cookie": "x"},
        {"X Evil": "x"},
        {"X-Evil:": "x"},
        {"": "x"},
        {"Content-Length": "0"},
        {"transfer-encoding": "chunked"},
        {"Connection": "keep-alive"},
    ],
)
def test_unsafe_scripted_headers_are_a_400_in_stripes_shape(headers: dict[str, str]) -> None:
    admin = Admin(StandinApp(StandinConfig(seed=1)))
    assert script(admin, GOOD) == (200, {"pending": 1})
    status, body = script(admin, GOOD, with_headers(headers))
    assert status == 400
    error = body["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == "responses[1].headers"
    assert error["message"].startswith("responses[1]: header")
    assert "\r" not in error["message"] and "\n" not in error["message"]
    assert admin.app.script.pending() == 1, "the rejected script changed nothing"


def test_ordinary_scripted_headers_are_kept() -> None:
    admin = Admin(StandinApp(StandinConfig(seed=1)))
    headers = {"Stripe-Should-Retry": "false", "Retry-After": "1", "X-Note": "a b\tc"}
    assert script(admin, with_headers(headers)) == (200, {"pending": 1})


def test_other_admin_errors_are_in_stripes_shape_too() -> None:
    admin = Admin(StandinApp(StandinConfig(seed=1)))
    reply = admin.handle(Request("GET", "/_standin/nope"))
    error = json.loads(reply.body)["error"]
    assert (reply.status, error["type"]) == (404, "invalid_request_error")
    assert error["message"].startswith("no admin endpoint /_standin/nope")


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.5", "::1", "localhost", "LOCALHOST"])
def test_loopback_hosts_bind_without_a_flag(host: str) -> None:
    assert is_loopback(host)
    assert load_config(["--host", host], {}).host == host


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "example.invalid"])  # noqa: S104
def test_other_hosts_are_refused_without_allow_remote(
    host: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        load_config(["--host", host], {})
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert f"refusing to bind {host!r}, not a loopback address" in err
    assert "--allow-remote" in err
    with pytest.raises(ConfigError, match="not a loopback address"):
        StandinConfig(host=host)


def test_allow_remote_by_flag_or_environment() -> None:
    assert load_config(["--host", "0.0.0.0", "--allow-remote"], {}).allow_remote  # noqa: S104
    config = load_config([], {"STANDIN_HOST": "0.0.0.0", "STANDIN_ALLOW_REMOTE": "1"})  # noqa: S104
    assert (config.host, config.allow_remote) == ("0.0.0.0", True)  # noqa: S104


def test_idle_timeout_has_a_default_and_must_be_positive(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert load_config([], {}).idle_timeout == 60
    assert load_config(["--idle-timeout", "0.5"], {}).idle_timeout == 0.5
    assert load_config([], {"STANDIN_IDLE_TIMEOUT": "2"}).idle_timeout == 2
    with pytest.raises(SystemExit):
        load_config(["--idle-timeout", "0"], {})
    assert "must be a positive number of seconds" in capsys.readouterr().err
