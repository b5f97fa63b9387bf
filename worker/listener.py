"""LISTEN on River's insert channel, on a connection of its own.

The connection is kept out of the pool: psycopg holds a connection while it
waits for notifications, and a query queued behind that wait would stall."""

from __future__ import annotations

import json
import logging
import threading

import psycopg
from psycopg import sql

log = logging.getLogger("worker.listener")

CHANNEL = "metadata.river_insert"


class InsertListener:
    """Sets `wake` whenever a job is inserted into `queue` (or when unsure)."""

    def __init__(
        self, conninfo: str, queue: str, wake: threading.Event, stop: threading.Event
    ) -> None:
        self._conninfo = conninfo
        self._queue = queue
        self._wake = wake
        self._stop = stop
        self._conn: psycopg.Connection[tuple[object, ...]] | None = None
        self.listening = threading.Event()

    def run(self) -> None:
        """Listens until `stop`; on a lost connection reconnects and wakes a catch-up claim."""
        delay = 0.1
        while not self._stop.is_set():
            try:
                self.run_once()
                delay = 0.1
            except psycopg.OperationalError as exc:
                self.listening.clear()
                log.warning("listener connection lost, reconnecting", extra={"error": str(exc)})
                self._close()
                self._stop.wait(delay)
                delay = min(delay * 2, 5.0)
        self._close()

    def run_once(self, timeout: float = 0.5) -> int:
        """Connects if needed, then handles the notifications that arrive within `timeout`."""
        if self._conn is None or self._conn.closed:
            self._conn = psycopg.connect(self._conninfo, autocommit=True)
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(CHANNEL)))
            self.listening.set()
            # Anything inserted while we were not listening is found by a claim.
            self._wake.set()
        received = 0
        for notify in self._conn.notifies(timeout=timeout):
            received += 1
            if self._concerns_us(notify.payload):
                self._wake.set()
            if self._stop.is_set():
                break
        return received

    def _concerns_us(self, payload: str) -> bool:
        try:
            return bool(json.loads(payload).get("queue") == self._queue)
        except (ValueError, AttributeError):
            return True  # unreadable: waking costs one cheap claim

    def _close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
