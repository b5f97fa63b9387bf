"""Counters behind ``GET /_standin/stats``."""

from __future__ import annotations

import threading
from collections import Counter
from typing import Any

#: Route kinds requests are counted under.
CREATE = "POST /v1/payment_intents"
RETRIEVE = "GET /v1/payment_intents/:id"
SEARCH = "GET /v1/payment_intents/search"
CONFIRM = "POST /v1/payment_intents/:id/confirm"
CANCEL = "POST /v1/payment_intents/:id/cancel"
CAPTURE = "POST /v1/payment_intents/:id/capture"
REFUND_CREATE = "POST /v1/refunds"
REFUND_LIST = "GET /v1/refunds"
REFUND = "GET /v1/refunds/:id"
EVENTS = "GET /v1/events"
EVENT = "GET /v1/events/:id"
CHARGE = "GET /v1/charges/:id"
OTHER = "other"
ROUTES = (
    CREATE,
    RETRIEVE,
    SEARCH,
    CONFIRM,
    CANCEL,
    CAPTURE,
    REFUND_CREATE,
    REFUND_LIST,
    REFUND,
    EVENTS,
    EVENT,
    CHARGE,
    OTHER,
)

#: Outcome recorded when the connection was closed without an answer.
NO_RESPONSE = "no_response"


class Stats:
    """Thread-safe counters of what the stand-in saw and did."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._requests: Counter[str] = Counter()
        self._responses: Counter[str] = Counter()
        self._faults: Counter[str] = Counter()
        self._events: Counter[str] = Counter()

    def request(self, route: str) -> None:
        """Count one API request under its route kind."""
        with self._lock:
            self._requests[route] += 1

    def response(self, status: int | None) -> None:
        """Count one answer by HTTP status (``None``: connection closed without answer)."""
        with self._lock:
            self._responses[NO_RESPONSE if status is None else str(status)] += 1

    def fault(self, name: str) -> None:
        """Count one injected fault (``drop``, ``fail_5xx``, ``scripted``...)."""
        with self._lock:
            self._faults[name] += 1

    def event(self, name: str) -> None:
        """Count one notable event (``payment_intents_created``, ``idempotent_replays``...)."""
        with self._lock:
            self._events[name] += 1

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        """JSON-ready copy of every counter, plus ``extra`` fields."""
        with self._lock:
            requests = dict(self._requests)
            data: dict[str, Any] = {
                "requests": {
                    "total": sum(requests.values()),
                    "by_route": {route: requests.get(route, 0) for route in ROUTES},
                },
                "responses": dict(sorted(self._responses.items())),
                "payment_intents_created": self._events["payment_intents_created"],
                "idempotent_replays": self._events["idempotent_replays"],
                "idempotency_mismatches": self._events["idempotency_mismatches"],
                "idempotency_conflicts": self._events["idempotency_conflicts"],
                "authentication_failures": self._events["authentication_failures"],
                "server_errors_saved": self._events["server_errors_saved"],
                "searches": self._events["searches"],
                "payment_intents_confirmed": self._events["payment_intents_confirmed"],
                "payment_intents_canceled": self._events["payment_intents_canceled"],
                "payment_intents_captured": self._events["payment_intents_captured"],
                "authorizations_expired": self._events["authorizations_expired"],
                "refunds_created": self._events["refunds_created"],
                "faults": {
                    name: self._faults[name]
                    for name in (
                        "drop",
                        "fail_5xx",
                        "fail_429",
                        "lose_response",
                        "create_then_5xx",
                        "scripted",
                    )
                },
            }
        data.update(extra)
        return data

    def clear(self) -> None:
        """Zero every counter."""
        with self._lock:
            self._requests.clear()
            self._responses.clear()
            self._faults.clear()
            self._events.clear()
