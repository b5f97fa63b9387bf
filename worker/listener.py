"""Wakes the producer when a job of our queue is inserted (River's insert NOTIFY)."""

from __future__ import annotations

import json
import logging
import threading
import time

import psycopg

from worker import telemetry
from worker.store import NotificationConnection

log = logging.getLogger("worker.listener")

CHANNEL = "metadata.river_insert"


class InsertListener:
    """Sets `wake` whenever a job is inserted into `queue` (or when unsure)."""

    def __init__(
        self,
        conninfo: str,
        queue: str,
        wake: threading.Event,
        stop: threading.Event,
        *,
        ping_interval: float = 5.0,
    ) -> None:
        if ping_interval <= 0:
            raise ValueError("ping_interval must be positive")
        self._notifications = NotificationConnection(conninfo)
        self._queue = queue
        self._wake = wake
        self._stop = stop
        self._ping_interval = ping_interval
        self._last_heard = time.monotonic()
        self.listening = threading.Event()

    def run(self) -> None:
        """Listens until `stop`; on a lost connection reconnects and wakes a catch-up claim."""
        delay = 0.1
        while not self._stop.is_set():
            telemetry.loop_beat("listener")
            try:
                self.run_once()
                delay = 0.1
            except psycopg.OperationalError as exc:
                self.listening.clear()
                log.warning("listener connection lost, reconnecting", extra={"error": str(exc)})
                self._notifications.close()
                # Capped at 1 s: after a database restart, work resumes within
                # a second of the server accepting connections.
                self._stop.wait(delay)
                delay = min(delay * 2, 1.0)
        self._notifications.close()

    def run_once(self, timeout: float = 0.5) -> int:
        """Connects if needed, handles what arrives within `timeout`, checks a silent line."""
        if self._notifications.ensure():
            self.listening.set()
            self._last_heard = time.monotonic()
            # Anything inserted while we were not listening is found by a claim.
            self._wake.set()
        received = 0
        for payload in self._notifications.payloads(timeout):
            received += 1
            if self._concerns_us(payload):
                self._wake.set()
            if self._stop.is_set():
                break
        now = time.monotonic()
        if received:
            self._last_heard = now
        elif now - self._last_heard >= self._ping_interval:
            self._notifications.ping()
            self._last_heard = now
        return received

    def _concerns_us(self, payload: str) -> bool:
        try:
            return bool(json.loads(payload).get("queue") == self._queue)
        except (ValueError, AttributeError):
            return True  # unreadable: waking costs one cheap claim
