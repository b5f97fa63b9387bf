"""What the webhook receiver's tests share: Stripe's signing scheme, events, a real receiver.

The signature follows Stripe's documented scheme, written here from the docs and not with
the SDK the receiver verifies with: `t=<unix time>,v1=<hex HMAC-SHA256 of "t.payload">`."""

from __future__ import annotations

import hashlib
import hmac
import http.client
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from uuid import uuid4

from prometheus_client.multiprocess import MultiProcessCollector

ROOT = Path(__file__).resolve().parent.parent
SECRET = "whsec_tests_current_4f9Qx2Lm"
OLD_SECRET = "whsec_tests_previous_Zk31pW"
TEST_KEY = "sk_test_webhook_tests_Pq7r"
LIVE_KEY = "sk_live_webhook_tests_Pq7r"


def signature(payload: bytes, secret: str, timestamp: int | None = None) -> str:
    t = int(time.time()) if timestamp is None else timestamp
    mac = hmac.new(secret.encode(), f"{t}.".encode() + payload, hashlib.sha256).hexdigest()
    return f"t={t},v1={mac}"


def event(
    obj: Mapping[str, Any],
    *,
    type: str = "payment_intent.succeeded",
    livemode: bool = False,
    event_id: str | None = None,
) -> dict[str, Any]:
    return {
        "id": event_id or f"evt_{uuid4().hex}",
        "object": "event",
        "api_version": "2026-11-17.clover",
        "created": int(time.time()),
        "livemode": livemode,
        "type": type,
        "data": {"object": dict(obj)},
    }


def intent(payment_id: object | None = None, intent_id: str | None = None) -> dict[str, Any]:
    """A PaymentIntent as Stripe sends it, with our metadata when `payment_id` is given."""
    return {
        "id": intent_id or f"pi_{uuid4().hex[:24]}",
        "object": "payment_intent",
        "amount": 2500,
        "currency": "usd",
        "status": "succeeded",
        "metadata": {"payment_id": str(payment_id)} if payment_id else {},
    }


def body_of(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Answer:
    def __init__(self, status: int, headers: dict[str, str], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def json(self) -> Any:
        return json.loads(self.body)

    def __repr__(self) -> str:
        return f"Answer({self.status}, {self.body[:200]!r})"


class Receiver:
    """`python -m webhooks` in a subprocess on a free port; its log goes to a file."""

    def __init__(self, env: Mapping[str, str], log_path: Path, metrics_dir: Path) -> None:
        self.port = free_port()
        self.log_path = log_path
        self.metrics_dir = metrics_dir
        metrics_dir.mkdir(parents=True, exist_ok=True)
        self.env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "PYTHONUNBUFFERED": "1",
            "WEBHOOK_HOST": "127.0.0.1",
            "WEBHOOK_PORT": str(self.port),
            "PROMETHEUS_MULTIPROC_DIR": str(metrics_dir),
            **env,
        }
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 15) -> Receiver:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "webhooks"],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while not self._listening():
            if self.process.poll() is not None:
                raise AssertionError(f"receiver exited {self.process.returncode}:\n{self.log()}")
            if time.monotonic() > deadline:
                raise AssertionError(f"receiver did not listen within {timeout} s:\n{self.log()}")
            time.sleep(0.02)
        return self

    def _listening(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False

    def stop(self, timeout: float = 20) -> int:
        """SIGTERM, as supervisord stops it; the exit status."""
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
                raise AssertionError(f"receiver ignored SIGTERM:\n{self.log()}") from None
        return self.process.returncode

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_lines(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    # --- requests ------------------------------------------------------------------------

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30,
    ) -> Answer:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)
        try:
            conn.request(method, path, body=body, headers=dict(headers or {}))
            response = conn.getresponse()
            return Answer(response.status, dict(response.getheaders()), response.read())
        finally:
            conn.close()

    def post(
        self,
        body: bytes,
        *,
        secret: str | None = SECRET,
        timestamp: int | None = None,
        sig: str | None = None,
        content_type: str = "application/json; charset=utf-8",
    ) -> Answer:
        headers = {"Content-Type": content_type}
        if sig is None and secret is not None:
            sig = signature(body, secret, timestamp)
        if sig is not None:
            headers["Stripe-Signature"] = sig
        return self.request("POST", "/webhooks/stripe", body, headers)

    def deliver(self, value: Mapping[str, Any], **kwargs: Any) -> Answer:
        return self.post(body_of(value), **kwargs)

    # --- metrics -------------------------------------------------------------------------

    def samples(self, name: str) -> dict[tuple[tuple[str, str], ...], float]:
        """The receiver's samples of metric `name`, by sorted labels (pid dropped)."""
        found: dict[tuple[tuple[str, str], ...], float] = {}
        collector = MultiProcessCollector(None, path=str(self.metrics_dir))  # type: ignore[no-untyped-call]
        for metric in collector.collect():  # type: ignore[no-untyped-call]
            for sample in metric.samples:
                if sample.name == name:
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                    found[labels] = found.get(labels, 0.0) + sample.value
        return found

    def rejections(self) -> dict[str, float]:
        return {
            dict(labels)["reason"]: value
            for labels, value in self.samples("payment_worker_webhook_rejections_total").items()
        }

    def events(self) -> dict[tuple[str, str], float]:
        return {
            (dict(labels)["type"], dict(labels)["outcome"]): value
            for labels, value in self.samples("payment_worker_webhook_events_total").items()
        }
