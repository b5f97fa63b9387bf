"""`python -m metrics.healthcheck` (the image's HEALTHCHECK): /healthz's answer as an exit
status and one line."""

from __future__ import annotations

import http.server
import threading
from collections.abc import Iterator

import pytest

from metrics import healthcheck


class _Healthz(http.server.BaseHTTPRequestHandler):
    status = 200
    body = b'{"database": "ok", "workers": "ok", "loops": "ok"}\n'

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/healthz" else 404)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


@pytest.fixture
def exporter() -> Iterator[http.server.HTTPServer]:
    server = http.server.HTTPServer(("127.0.0.1", 0), _Healthz)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    _Healthz.status = 200


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, ("127.0.0.1", 9187)),
        ({"METRICS_HOST": "0.0.0.0", "METRICS_PORT": "9300"}, ("127.0.0.1", 9300)),  # noqa: S104
        ({"METRICS_HOST": "::"}, ("127.0.0.1", 9187)),
        ({"METRICS_HOST": "10.1.2.3", "METRICS_PORT": " 9187 "}, ("10.1.2.3", 9187)),
        ({"METRICS_HOST": "[fd00::1]"}, ("fd00::1", 9187)),
    ],
)
def test_it_asks_where_the_exporter_listens(env: dict[str, str], expected: tuple[str, int]) -> None:
    assert healthcheck.target(env) == expected


def test_200_is_healthy(exporter: http.server.HTTPServer) -> None:
    healthy, detail = healthcheck.check("127.0.0.1", exporter.server_port)
    assert healthy
    assert '"workers": "ok"' in detail


def test_503_is_unhealthy_and_says_why(exporter: http.server.HTTPServer) -> None:
    _Healthz.status = 503
    healthy, detail = healthcheck.check("127.0.0.1", exporter.server_port)
    assert not healthy
    assert detail.startswith("503 {")


def test_no_exporter_is_unhealthy(exporter: http.server.HTTPServer) -> None:
    port = exporter.server_port
    exporter.shutdown()
    exporter.server_close()
    healthy, detail = healthcheck.check("127.0.0.1", port, timeout=2)
    assert not healthy
    assert detail.startswith(f"the exporter does not answer on 127.0.0.1:{port}: ")
