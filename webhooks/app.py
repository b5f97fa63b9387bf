"""The receiver's HTTP side, a Starlette app: POST /webhooks/stripe and GET /healthz.

An event is answered 2xx only once it is committed with its job; every refusal is a short
JSON error that never quotes the request."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from webhooks import telemetry
from webhooks.store import EventStore, InvalidEvent, StoreUnavailable
from webhooks.verify import Rejected, parse, verify

log = logging.getLogger("webhooks")

PATH = "/webhooks/stripe"
# Stripe's events are a few KiB; anything near this is not one of them.
MAX_BODY_BYTES = 1024 * 1024
# A client has this long to send its whole body once its headers are in.
BODY_TIMEOUT_SECONDS = 10.0


class RejectionLog:
    """One warning per reason per `every` seconds at most: a flood of bad posts (a wrong
    secret after a rotation, a scanner) must not flood the log. Each line says how many
    refusals it stands for; the metric counts every one."""

    def __init__(self, every: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._every = every
        self._clock = clock
        self._last: dict[str, float] = {}
        self._held: dict[str, int] = {}

    def warn(self, reason: str, message: str, client: str) -> None:
        now = self._clock()
        last = self._last.get(reason)
        if last is not None and now - last < self._every:
            self._held[reason] = self._held.get(reason, 0) + 1
            return
        self._last[reason] = now
        refused = 1 + self._held.pop(reason, 0)
        log.warning(
            "webhook rejected: %s",
            message,
            extra={"reason": reason, "client": client, "refused": refused},
        )


def error(status: int, message: str, **headers: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status, headers=headers or None)


class _TooLarge(Exception):
    pass


async def read_body(request: Request, limit: int, timeout: float) -> bytes:
    """The body, refused (without reading the rest) as soon as it passes `limit` bytes."""
    chunks: list[bytes] = []
    size = 0
    async with asyncio.timeout(timeout):
        async for chunk in request.stream():
            size += len(chunk)
            if size > limit:
                raise _TooLarge
            chunks.append(chunk)
    return b"".join(chunks)


def _declared_length(request: Request) -> int | None:
    raw = request.headers.get("content-length")
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _is_json(content_type: str) -> bool:
    return content_type.split(";", 1)[0].strip().lower() == "application/json"


class StripeWebhook:
    """POST /webhooks/stripe as a plain ASGI app, so that every method reaches it and a
    wrong one is counted."""

    def __init__(self, store: EventStore, secrets: tuple[str, ...], livemode: bool) -> None:
        self._store = store
        self._secrets = secrets
        self._livemode = livemode
        self._rejections = RejectionLog()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request = Request(scope, receive)
        response = await self._answer(request)
        await response(scope, receive, send)
        telemetry.REQUEST_SECONDS.labels(str(response.status_code)).observe(
            time.perf_counter() - started
        )

    async def _answer(self, request: Request) -> Response:
        try:
            return await self._handle(request)
        except Rejected as exc:
            telemetry.REJECTIONS.labels(exc.reason).inc()
            self._rejections.warn(exc.reason, exc.message, _client(request))
            return error(_STATUS.get(exc.reason, 400), exc.message, **_HEADERS.get(exc.reason, {}))

    async def _handle(self, request: Request) -> Response:
        if request.method != "POST":
            raise Rejected("method", "only POST is accepted here")
        if not _is_json(request.headers.get("content-type", "")):
            raise Rejected("content_type", "the body must be application/json")
        declared = _declared_length(request)
        if declared is not None and declared > MAX_BODY_BYTES:
            raise Rejected("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes")
        try:
            body = await read_body(request, MAX_BODY_BYTES, BODY_TIMEOUT_SECONDS)
        except _TooLarge:
            raise Rejected("body_too_large", f"the body is over {MAX_BODY_BYTES} bytes") from None
        except TimeoutError:
            raise Rejected("timeout", "the body did not arrive in time") from None
        except ClientDisconnect:
            raise Rejected("malformed", "the client went away mid-body") from None
        text = verify(body, request.headers.get("stripe-signature"), self._secrets)
        event = parse(text, self._livemode)
        try:
            outcome = await self._store.record(event.text)
        except InvalidEvent as exc:
            log.warning(
                "verified webhook is no event the database accepts",
                extra={"event_id": event.id, "sqlstate": str(exc)},
            )
            raise Rejected("malformed", "the event is not a valid Stripe event") from None
        except StoreUnavailable as exc:
            log.error(
                "cannot record the event: answering 503 so that Stripe retries",
                extra={"event_id": event.id, "type": event.type, "error": str(exc)},
            )
            return error(503, "temporarily unable to record the event", **{"Retry-After": "5"})
        telemetry.EVENTS.labels(event.type, outcome).inc()
        log.debug(
            "webhook event recorded",
            extra={"event_id": event.id, "type": event.type, "outcome": outcome},
        )
        return JSONResponse({"received": True, "outcome": outcome})


_STATUS = {"method": 405, "content_type": 415, "body_too_large": 413, "timeout": 408}
# A body left unread, or half sent, ends the connection: its rest is not worth reading.
_HEADERS = {
    "method": {"Allow": "POST"},
    "body_too_large": {"Connection": "close"},
    "timeout": {"Connection": "close"},
}


def _client(request: Request) -> str:
    return request.client.host if request.client else ""


def build_app(store: EventStore, secrets: tuple[str, ...], livemode: bool) -> Starlette:
    async def healthz(_request: Request) -> Response:
        try:
            await store.ping()
        except StoreUnavailable as exc:
            return JSONResponse({"database": f"unreachable: {exc}"}, status_code=503)
        return JSONResponse({"database": "ok"})

    async def not_found(_request: Request, _exc: Any) -> Response:
        return error(404, f"not found: try POST {PATH} or GET /healthz")

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await store.open()
        try:
            yield
        finally:
            await store.close()

    return Starlette(
        routes=[
            Route(PATH, StripeWebhook(store, secrets, livemode)),
            Route("/healthz", healthz, methods=["GET"]),
        ],
        exception_handlers={404: not_found},
        lifespan=lifespan,
    )
