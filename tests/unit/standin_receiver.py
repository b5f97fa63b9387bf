"""A real HTTP endpoint for webhook tests: verifies each delivery with the stripe SDK's
``Webhook.construct_event`` (400 when the signature is wrong) and answers scripted statuses."""

from __future__ import annotations

import json
import threading
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

import stripe


@dataclass(frozen=True)
class Delivery:
    """One POST the receiver saw."""

    headers: dict[str, str]
    body: bytes
    signature_ok: bool
    status: int

    @property
    def event(self) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(self.body)
        return data


class Receiver:
    """``with Receiver("whsec_...") as hooks: hooks.url``; ``hooks.answer(500, 500)`` queues
    statuses for the next good-signature deliveries (then 200); ``hooks.hold()`` makes the
    next deliveries wait until ``release()``."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.deliveries: list[Delivery] = []
        self._statuses: deque[int] = deque()
        self._changed = threading.Condition()
        self._gate = threading.Event()
        self._gate.set()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                receiver._gate.wait(10)
                headers = {name.lower(): value for name, value in self.headers.items()}
                status = receiver._status_for(headers, body)
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                """Quiet."""

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/webhooks"

    def answer(self, *statuses: int) -> None:
        with self._changed:
            self._statuses.extend(statuses)

    def hold(self) -> None:
        self._gate.clear()

    def release(self) -> None:
        self._gate.set()

    def wait_for(self, count: int, timeout: float = 10.0) -> list[Delivery]:
        """Block until at least ``count`` deliveries arrived; answers them all."""
        with self._changed:
            if not self._changed.wait_for(lambda: len(self.deliveries) >= count, timeout):
                raise AssertionError(f"{len(self.deliveries)} deliveries arrived, not {count}")
            return list(self.deliveries)

    def events(self) -> list[dict[str, Any]]:
        """The events of deliveries whose signature verified, in arrival order."""
        with self._changed:
            return [d.event for d in self.deliveries if d.signature_ok]

    def _status_for(self, headers: dict[str, str], body: bytes) -> int:
        try:
            stripe.Webhook.construct_event(
                body.decode(), headers.get("stripe-signature", ""), self.secret
            )
            ok = True
        except stripe.SignatureVerificationError:
            ok = False
        with self._changed:
            status = (self._statuses.popleft() if self._statuses else 200) if ok else 400
            self.deliveries.append(Delivery(headers, body, ok, status))
            self._changed.notify_all()
        return status

    def __enter__(self) -> Receiver:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._gate.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)
