"""The exporter's HTTP side: /metrics and /healthz."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import psycopg
from prometheus_client import CollectorRegistry, make_wsgi_app

from metrics.collectors import latest_heartbeat
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
        """Healthy when the database answers and a worker showed life recently."""
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
        return report["database"] == "ok" and report["workers"] == "ok", report

    def _health(self, start_response: StartResponse) -> Iterable[bytes]:
        healthy, report = self.health()
        status = "200 OK" if healthy else "503 Service Unavailable"
        start_response(status, [("Content-Type", "application/json")])
        return [json.dumps(report).encode() + b"\n"]


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """Scrapes every few seconds would drown the logs."""


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(app: ExporterApp, host: str, port: int) -> WSGIServer:
    """A threaded server, bound but not yet serving: call serve_forever()."""
    return make_server(host, port, app, server_class=_ThreadingServer, handler_class=_QuietHandler)
