"""HTTP plumbing: a threading HTTP/1.1 server that feeds requests to the app and logs them."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading
import time
import traceback
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import FrameType
from typing import Any, TextIO
from urllib.parse import urlsplit

from stripe_standin import errors
from stripe_standin.admin import PREFIX, Admin
from stripe_standin.app import Hangup, Reply, Request, Response, StandinApp, json_body
from stripe_standin.config import StandinConfig
from stripe_standin.expiry import ExpirySweeper

MAX_BODY_BYTES = 1024 * 1024
_SECRETS = re.compile(r"(_secret_)\w+|(sk|rk)_(test|live)_\w+")


def redact(text: str) -> str:
    """Hide client secrets and API keys that might appear in a log line."""
    return _SECRETS.sub(lambda m: (m.group(1) or f"{m.group(2)}_{m.group(3)}_") + "***", text)


class StandinServer(ThreadingHTTPServer):
    """One thread per connection; daemon threads so shutdown never waits for sleepers."""

    daemon_threads = True
    request_queue_size = 256  # 50+ clients connecting at once must not overflow the backlog
    allow_reuse_address = True

    def __init__(
        self, address: tuple[str, int], app: StandinApp, log: TextIO | None = sys.stderr
    ) -> None:
        self.app = app
        self.admin = Admin(app)
        self.log = log
        self._log_lock = threading.Lock()
        super().__init__(address, StandinHandler)

    @property
    def port(self) -> int:
        """The bound port (useful when started with port 0)."""
        return int(self.server_address[1])

    def write_log(self, line: str) -> None:
        """Write one redacted line to the log stream, if any."""
        if self.log is None:
            return
        with self._log_lock:
            self.log.write(redact(line) + "\n")
            self.log.flush()


class StandinHandler(BaseHTTPRequestHandler):
    """Reads one request, asks the app or admin for a reply, writes it (or hangs up)."""

    protocol_version = "HTTP/1.1"
    # Headers and body go out in two writes; with Nagle on, the body waits
    # for the client's delayed ACK of the headers: ~40 ms on every request.
    disable_nagle_algorithm = True
    server_version = "stripe-standin"
    sys_version = ""
    server: StandinServer

    def setup(self) -> None:
        super().setup()
        # An idle or slow client is dropped (handle_one_request logs "Request timed out").
        self.connection.settimeout(self.server.app.config.idle_timeout)

    def do_GET(self) -> None:
        """Serve a GET."""
        self._dispatch()

    def do_POST(self) -> None:
        """Serve a POST."""
        self._dispatch()

    def do_DELETE(self) -> None:
        """Serve a DELETE (only ever answers an error)."""
        self._dispatch()

    def _dispatch(self) -> None:
        started = time.monotonic()
        split = urlsplit(self.path)
        body = self._read_body()
        if body is None:
            return
        request = Request(
            method=self.command,
            path=split.path,
            query=split.query,
            headers={name.lower(): value for name, value in self.headers.items()},
            body=body,
        )
        is_admin = split.path.startswith(PREFIX)
        try:
            reply: Reply = (
                self.server.admin.handle(request)
                if is_admin
                else self.server.app.handle_api(request)
            )
        except Exception:
            self.server.write_log("internal error:\n" + traceback.format_exc().rstrip())
            reply = Response(500, json_body(errors.api_error().body()))
        if isinstance(reply, Hangup):
            self.close_connection = True  # nothing written: the client sees the socket close
        else:
            self._send(reply)
        self._log_line(request, reply, started)

    def _read_body(self) -> bytes | None:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            return self._read_chunked()
        length_header = self.headers.get("Content-Length", "0") or "0"
        try:
            length = int(length_header)
        except ValueError:
            length = -1
        if length < 0 or length > MAX_BODY_BYTES:
            self.close_connection = True
            self._send(
                Response(
                    400 if length < 0 else 413,
                    json_body(errors.invalid_request("Invalid Content-Length.").body()),
                )
            )
            return None
        return self.rfile.read(length) if length else b""

    def _read_chunked(self) -> bytes | None:
        chunks: list[bytes] = []
        total = 0
        while True:
            size_line = self.rfile.readline(1024).split(b";", 1)[0].strip()
            try:
                size = int(size_line, 16)
            except ValueError:
                size = -1
            if size < 0 or total + size > MAX_BODY_BYTES:
                self.close_connection = True
                error = errors.invalid_request("Invalid chunked body.")
                self._send(Response(400, json_body(error.body())))
                return None
            if size == 0:
                while self.rfile.readline(1024) not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return b"".join(chunks)
            chunks.append(self.rfile.read(size))
            self.rfile.readline(1024)
            total += size

    def _send(self, response: Response) -> None:
        self.send_response(response.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(response.body)

    def _log_line(self, request: Request, reply: Reply, started: float) -> None:
        if self.server.app.config.quiet:
            return
        elapsed_ms = (time.monotonic() - started) * 1000
        if isinstance(reply, Response):
            outcome = str(reply.status)
            request_id = reply.headers.get("Request-Id", "-")
        else:
            outcome, request_id = "no-response", "-"
        parts = [
            time.strftime("%Y-%m-%dT%H:%M:%S"),
            request.method,
            request.path,
            outcome,
            f"{elapsed_ms:.0f}ms",
            request_id,
        ]
        key = request.headers.get("idempotency-key")
        if key:
            parts.append(f"idem={key}")
        if reply.note:
            parts.append(reply.note)
        self.server.write_log(" ".join(parts))

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        """Replaced by :meth:`_log_line` (which never prints headers or query strings)."""

    def log_message(self, format: str, *args: Any) -> None:
        """Protocol-level errors (bad request lines...), redacted."""
        self.server.write_log("http: " + (format % args))


def write_port_file(path: Path, port: int) -> None:
    """Write the port atomically, so a reader never sees a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(f"{port}\n")
    tmp.replace(path)


def run(config: StandinConfig, log: TextIO = sys.stderr) -> int:
    """Serve until SIGTERM or SIGINT; returns the process exit status."""
    app = StandinApp(config)
    server = StandinServer((config.host, config.port), app, log=log)

    def stop(signum: int, _frame: FrameType | None) -> None:
        server.write_log(f"received {signal.Signals(signum).name}, shutting down")
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    key_mode = "the configured key only" if config.api_key else "any sk_test_ key"
    settings = ", ".join(f"{name}={value}" for name, value in config.faults.as_dict().items())
    server.write_log(
        f"stripe-standin listening on http://{config.host}:{server.port} "
        f"(accepting {key_mode}; {settings}; seed={config.seed})"
    )
    hooks = config.webhooks
    server.write_log(
        f"webhooks: {hooks.url or 'no endpoint'} "
        f"({'enabled' if hooks.enabled else 'disabled'}; "
        f"signing secret {'set' if config.webhook_secret else 'not set'}; "
        f"retry_base={hooks.retry_base_seconds:g}s, max_attempts={hooks.max_attempts}, "
        f"duplicate={hooks.duplicate}, drop={hooks.drop}, bad_signature={hooks.bad_signature}, "
        f"reorder_max={hooks.reorder_max_seconds:g}s)"
    )
    server.write_log(
        f"authorization window {config.authorization_window:g}s; "
        f"refunds {'stay pending' if config.refunds_pending else 'succeed at once'}"
    )
    app.webhooks.start()
    sweeper = ExpirySweeper(app.expire_authorizations)
    sweeper.start()
    if config.port_file is not None:
        write_port_file(config.port_file, server.port)
    try:
        server.serve_forever(poll_interval=0.1)
    finally:
        sweeper.stop()
        app.webhooks.stop()
        server.server_close()
    server.write_log("stopped")
    return 0
