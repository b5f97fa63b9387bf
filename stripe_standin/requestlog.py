"""Every create and search request with its interval and outcome, for ``/_standin/requests``.

A test groups them by payment: two requests of one payment whose intervals overlap ran at
the same time, and the counts per outcome say how often it was created, replayed or failed.
"""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import asdict, dataclass
from typing import Any

#: Oldest entries are dropped beyond this, so a long `make run` stays bounded.
MAX_ENTRIES = 200_000


@dataclass(frozen=True)
class RequestEntry:
    route: str
    idempotency_key: str | None
    payment_id: str | None
    started: float
    ended: float
    outcome: str  # created, replay, lost, dropped, error
    status: int | None  # None: closed without an answer


class RequestLog:
    """Thread-safe, bounded, in arrival order of completion."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._entries: deque[RequestEntry] = deque(maxlen=max_entries)

    def record(self, **fields: Any) -> None:
        entry = RequestEntry(**fields)
        with self._lock:
            self._entries.append(entry)

    def entries(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        """JSON-ready entries, of one payment if given, in order of start."""
        with self._lock:
            chosen = [e for e in self._entries if payment_id is None or e.payment_id == payment_id]
        return [asdict(e) for e in sorted(chosen, key=lambda e: e.started)]

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()
