"""Stripe Event objects: made at every state change, listed and retrieved like ``/v1/events``.

An event is ``{id: evt_..., object: "event", api_version, created, data: {object}, livemode,
pending_webhooks, request: {id, idempotency_key}, type}``; ``data.object`` is a snapshot of
the object at that moment. Stripe sends ``data.previous_attributes`` only on ``*.updated``
events: the stand-in's one is refund.updated, with the status the refund had before.
``pending_webhooks`` counts the endpoints that have not yet acknowledged the event (0 or 1
here) and drops when the delivery succeeds.

``GET /v1/events`` follows Stripe's list: newest first, ``limit`` (1-100, default 10),
``starting_after`` / ``ending_before`` cursors, ``created`` (a timestamp or ``created[gt|gte|
lt|lte]``), ``type`` (``*`` wildcards as in ``payment_intent.*``) or ``types[]`` (up to 20),
``has_more`` and ``url``.
"""

from __future__ import annotations

import copy
import fnmatch
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from stripe_standin.errors import invalid_request, resource_missing, unknown_param
from stripe_standin.intents import random_token

#: The API version events are rendered in (the account default of the stand-in).
API_VERSION = "2026-10-28.endive"
#: Oldest events are forgotten beyond this (Stripe keeps them 30 days), so memory stays bounded.
MAX_EVENTS = 200_000
MAX_LIST_LIMIT = 100
MAX_TYPES = 20
LIST_PARAMS = frozenset(
    {"created", "delivery_success", "ending_before", "expand", "limit", "starting_after", "type"}
    | {"types"}
)
_RANGE_OPS = ("gt", "gte", "lt", "lte")


@dataclass(frozen=True)
class Origin:
    """The API request that caused an event (both ``None`` for automatic changes)."""

    request_id: str | None = None
    idempotency_key: str | None = None


AUTOMATIC = Origin()


def new_event_id() -> str:
    """``evt_`` followed by 24 random characters."""
    return "evt_" + random_token(24)


class EventStore:
    """Every event, in creation order; listeners hear of each new one (webhook delivery)."""

    def __init__(self, max_events: int = MAX_EVENTS) -> None:
        self._lock = threading.Lock()
        self._events: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._max = max_events
        self._listeners: list[Callable[[dict[str, Any]], bool]] = []

    def listen(self, listener: Callable[[dict[str, Any]], bool]) -> None:
        """Call ``listener(event)`` for each new event, which it must not keep or change; it
        answers whether a webhook is now pending."""
        self._listeners.append(listener)

    def record(
        self,
        event_type: str,
        obj: dict[str, Any],
        origin: Origin,
        *,
        created: int,
        previous: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Make, store and announce one event (``previous``: the changed fields' old values,
        for an ``*.updated`` event); returns a copy of it."""
        event: dict[str, Any] = {
            "id": new_event_id(),
            "object": "event",
            "api_version": API_VERSION,
            "created": created,
            "data": {"object": copy.deepcopy(obj)},
            "livemode": False,
            "pending_webhooks": 0,
            "request": {"id": origin.request_id, "idempotency_key": origin.idempotency_key},
            "type": event_type,
        }
        if previous is not None:
            event["data"]["previous_attributes"] = copy.deepcopy(previous)
        with self._lock:
            self._events[event["id"]] = event
            while len(self._events) > self._max:
                self._events.popitem(last=False)
            pending = 0
            for listener in self._listeners:  # under the lock: it reads the event as it is now
                pending += 1 if listener(event) else 0
            event["pending_webhooks"] = pending
            return copy.deepcopy(event)

    def delivered(self, event_id: str) -> None:
        """An endpoint acknowledged the event: one webhook fewer pending."""
        with self._lock:
            event = self._events.get(event_id)
            if event is not None and event["pending_webhooks"] > 0:
                event["pending_webhooks"] -= 1

    def get(self, event_id: str) -> dict[str, Any] | None:
        """A copy of the event, or ``None``."""
        with self._lock:
            event = self._events.get(event_id)
            return copy.deepcopy(event) if event is not None else None

    def all(self) -> list[dict[str, Any]]:
        """Every event, oldest first (copies)."""
        with self._lock:
            return copy.deepcopy(list(self._events.values()))

    def __len__(self) -> int:
        with self._lock:
            return len(self._events)

    def clear(self) -> None:
        """Forget every event."""
        with self._lock:
            self._events.clear()

    def list(self, form: dict[str, Any]) -> dict[str, Any]:
        """Answer ``GET /v1/events`` for decoded query parameters; raises ``StripeError``."""
        query = parse_list_query(form)
        with self._lock:
            newest_first = [copy.deepcopy(e) for e in reversed(self._events.values())]
        if query.starting_after is not None:
            at = _position(query.starting_after, newest_first, "starting_after")
            rest = [e for e in newest_first[at + 1 :] if query.matches(e)]
            page, has_more = rest[: query.limit], len(rest) > query.limit
        elif query.ending_before is not None:
            at = _position(query.ending_before, newest_first, "ending_before")
            before = [e for e in newest_first[:at] if query.matches(e)]
            page, has_more = before[-query.limit :], len(before) > query.limit
        else:
            chosen = [e for e in newest_first if query.matches(e)]
            page, has_more = chosen[: query.limit], len(chosen) > query.limit
        return {"object": "list", "data": page, "has_more": has_more, "url": "/v1/events"}


def _position(cursor: str, newest_first: list[dict[str, Any]], param: str) -> int:
    """Where the cursor event sits in the newest-first order (it need not match the filters)."""
    for index, event in enumerate(newest_first):
        if event["id"] == cursor:
            return index
    raise resource_missing("event", cursor, param)


@dataclass(frozen=True)
class ListQuery:
    """Validated ``GET /v1/events`` parameters."""

    limit: int = 10
    starting_after: str | None = None
    ending_before: str | None = None
    created: tuple[tuple[str, int], ...] = ()
    types: tuple[str, ...] = ()

    def matches(self, event: dict[str, Any]) -> bool:
        """Whether the event passes the created and type filters."""
        created = int(event["created"])
        for op, bound in self.created:
            if not _compare(op, created, bound):
                return False
        return not self.types or any(fnmatch.fnmatchcase(event["type"], t) for t in self.types)


def created_bounds(raw: Any) -> tuple[tuple[str, int], ...]:
    """A list's checked ``created`` filter (a timestamp, or a hash of gt/gte/lt/lte)."""
    return _created(raw)


def within_bounds(created: int, bounds: tuple[tuple[str, int], ...]) -> bool:
    """Whether ``created`` passes every bound."""
    return all(_compare(op, created, bound) for op, bound in bounds)


def _compare(op: str, value: int, bound: int) -> bool:
    if op == "gt":
        return value > bound
    if op == "gte":
        return value >= bound
    if op == "lt":
        return value < bound
    if op == "lte":
        return value <= bound
    return value == bound


def parse_list_query(form: dict[str, Any]) -> ListQuery:
    """Check list parameters with Stripe's messages."""
    for name in form:
        if name not in LIST_PARAMS:
            raise unknown_param(name)
    if "starting_after" in form and "ending_before" in form:
        raise invalid_request(
            "You may only specify one of these parameters: ending_before, starting_after.",
            param="ending_before",
        )
    if "type" in form and "types" in form:
        raise invalid_request(
            "You may only specify one of these parameters: type, types.", param="types"
        )
    return ListQuery(
        limit=_limit(form.get("limit")),
        starting_after=_cursor(form, "starting_after"),
        ending_before=_cursor(form, "ending_before"),
        created=_created(form.get("created")),
        types=_types(form),
    )


def _limit(raw: Any) -> int:
    if raw is None or raw == "":
        return 10
    if not isinstance(raw, str) or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise invalid_request(
            f"Invalid limit: must be an integer between 1 and {MAX_LIST_LIMIT}", param="limit"
        )
    return int(raw)


def _cursor(form: dict[str, Any], name: str) -> str | None:
    raw = form.get(name)
    if raw is None:
        return None
    if not isinstance(raw, str) or raw == "":
        raise invalid_request(f"Invalid {name}: must be an object id", param=name)
    return raw


def _integer(raw: Any, param: str) -> int:
    if isinstance(raw, str) and raw.lstrip("-").isdigit():
        return int(raw)
    raise invalid_request(f"Invalid integer: {raw}", param=param)


def _created(raw: Any) -> tuple[tuple[str, int], ...]:
    if raw is None:
        return ()
    if isinstance(raw, str):
        return (("eq", _integer(raw, "created")),)
    if not isinstance(raw, dict):
        raise invalid_request("Invalid created: must be an integer or a hash", param="created")
    bounds = []
    for op, value in raw.items():
        if op not in _RANGE_OPS:
            raise unknown_param(f"created[{op}]")
        bounds.append((op, _integer(value, f"created[{op}]")))
    return tuple(bounds)


def _types(form: dict[str, Any]) -> tuple[str, ...]:
    if "type" in form:
        raw = form["type"]
        if not isinstance(raw, str) or raw == "":
            raise invalid_request("Invalid type: must be a string", param="type")
        return (raw,)
    raw = form.get("types")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(t, str) and t for t in raw):
        raise invalid_request("Invalid array: types must be an array of strings.", param="types")
    if len(raw) > MAX_TYPES:
        raise invalid_request(
            f"Invalid types: at most {MAX_TYPES} types may be given.", param="types"
        )
    return tuple(raw)
