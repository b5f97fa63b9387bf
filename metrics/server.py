"""The exporter's HTTP side: /metrics and /healthz."""

from __future__ import annotations

import contextlib
import json
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer

import psycopg
from prometheus_client import CollectorRegistry, make_wsgi_app

from metrics.collectors import latest_heartbeat, stalled_loops
from metrics.database import DatabaseReader

StartResponse = Callable[..., Any]


class ExporterApp:
    def __init__(
        self,
        registry: CollectorRegistry,
        reader: DatabaseReader,
        multiproc_dir: Path | None,
        heartbeat_max_age: float,
    ) -> None:
        self._metrics = make_wsgi_app(registry)
        self._reader = reader
        self._multiproc_dir = multiproc_dir
        self._heartbeat_max_age = heartbeat_max_age

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        path = environ.get("PATH_INFO", "")
        if path == "/metrics":
            return self._metrics(environ, start_response)  # type: ignore[no-any-return]
        if path == "/healthz":
            return self._health(start_response)
        start_response("404 Not Found", [("Content-Type", "text/plain")])
        return [b"not found: try /metrics or /healthz\n"]

    def health(self) -> tuple[bool, dict[str, Any]]:
        """Healthy when the database answers, a worker showed life recently, and
        no live worker has a loop that stopped going round."""
        report: dict[str, Any] = {}
        try:
            self._reader.ping()
            report["database"] = "ok"
        except psycopg.Error as exc:
            report["database"] = f"unreachable: {type(exc).__name__}"
        beat = latest_heartbeat(self._multiproc_dir)
        if beat is None:
            report["workers"] = "no live worker has reported"
        else:
            age = time.time() - beat
            report["last_worker_heartbeat_age_seconds"] = round(age, 3)
            report["workers"] = "ok" if age <= self._heartbeat_max_age else "silent"
        stalled = stalled_loops(self._multiproc_dir, self._heartbeat_max_age, time.time())
        report["loops"] = [str(loop) for loop in stalled] if stalled else "ok"
        healthy = report["database"] == "ok" and report["workers"] == "ok" and not stalled
        return healthy, report

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        healthy, report = self.health()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(report).encode() + b"\n"]


# An idle or slow client holds one thread for at most this long, and at most this many
# are served at once: a scrape is one short request, so a handful suffices.
REQUEST_TIMEOUT = 10.0
MAX_CONNECTIONS = 16


class _QuietHandler(WSGIRequestHandler):
    server: ExporterServer

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.server.request_timeout)

    def handle(self) -> None:
        # A client that went quiet or away is dropped without a traceback.
        with contextlib.suppress(TimeoutError, ConnectionError):
            super().handle()

    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the logs."""


class ExporterServer(ThreadingMixIn, WSGIServer):
    """One thread per connection, at most `max_connections` at once; beyond that a
    connection is closed at once rather than queued behind idle ones. (No 503: closing
    before its request has arrived would reset the connection and lose the answer.)"""

    daemon_threads = True
    # Stopping must not wait for the idle clients' threads.
    block_on_close = False

    def __init__(
        self, address: tuple[str, int], *, request_timeout: float, max_connections: int
    ) -> None:
        self.request_timeout = request_timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _QuietHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()  # no thread started, so none will release it
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()


def serve(
    app: ExporterApp,
    host: str,
    port: int,
    *,
    request_timeout: float = REQUEST_TIMEOUT,
    max_connections: int = MAX_CONNECTIONS,
) -> ExporterServer:
    """A threaded server, bound but not yet serving: call serve_forever()."""
    server = ExporterServer(
        (host, port), request_timeout=request_timeout, max_connections=max_connections
    )
    server.set_app(app)
    return server
