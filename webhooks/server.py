"""uvicorn, set up for a public endpoint: bounded waits, bounded concurrency, quiet headers."""

from __future__ import annotations

import asyncio
from typing import Any

import uvicorn
from starlette.applications import Starlette
from uvicorn.protocols.http.h11_impl import H11Protocol

# A client has this long to send a request's headers (a fresh connection's first, or the
# next on a kept-alive one). uvicorn times out only idle kept-alive connections.
HEADER_TIMEOUT_SECONDS = 10.0
KEEP_ALIVE_SECONDS = 5
# Connections and requests at once; beyond that uvicorn answers 503 (Stripe retries).
MAX_CONCURRENCY = 200
# On SIGTERM the requests in hand get this long to finish; the pool closes after them.
GRACEFUL_SHUTDOWN_SECONDS = 10
# Request line plus headers: Stripe's are well under 4 KiB.
MAX_HEADER_BYTES = 16 * 1024


class _HeaderTimeoutProtocol(H11Protocol):
    """h11 with a deadline on the headers: a client trickling them in is disconnected."""

    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_header_timer()
        super().connection_lost(exc)

    def handle_events(self) -> None:
        super().handle_events()
        if self.cycle is not None and not self.cycle.response_complete:
            self._cancel_header_timer()  # a whole request is in: the app's time now

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing():
            self._arm_header_timer()

    def _arm_header_timer(self) -> None:
        self._cancel_header_timer()
        self._header_timer = self.loop.call_later(HEADER_TIMEOUT_SECONDS, self._header_timeout)

    def _cancel_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _header_timeout(self) -> None:
        self._header_timer = None
        waiting = self.cycle is None or self.cycle.response_complete
        if waiting and not self.transport.is_closing():
            self.transport.close()


def server_config(app: Starlette, host: str, port: int, **overrides: Any) -> uvicorn.Config:
    settings: dict[str, Any] = {
        "host": host,
        "port": port,
        "http": _HeaderTimeoutProtocol,
        "ws": "none",
        "loop": "asyncio",
        "lifespan": "on",
        # Our JSON logging, configured before; no access log (a line per delivery at
        # Stripe's rate would drown the rest, and rejections are logged by the app).
        "log_config": None,
        "access_log": False,
        # Behind a proxy, set up X-Forwarded-For trust there; off here by default.
        "proxy_headers": False,
        "server_header": False,
        "date_header": True,
        "timeout_keep_alive": KEEP_ALIVE_SECONDS,
        "timeout_graceful_shutdown": GRACEFUL_SHUTDOWN_SECONDS,
        "limit_concurrency": MAX_CONCURRENCY,
        "h11_max_incomplete_event_size": MAX_HEADER_BYTES,
    }
    settings.update(overrides)
    return uvicorn.Config(app, **settings)
