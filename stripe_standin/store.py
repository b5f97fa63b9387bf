"""In-memory, thread-safe storage: created PaymentIntents and idempotency-key results."""

from __future__ import annotations

import copy
import enum
import hashlib
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace
from typing import Any

#: Stripe keeps idempotency results for at least 24 hours.
IDEMPOTENCY_TTL_SECONDS = 24 * 60 * 60


@dataclass(frozen=True)
class StoredResponse:
    """A response saved against an idempotency key, replayed verbatim on retries."""

    status: int
    body: bytes
    request_id: str


@dataclass(frozen=True)
class StoredIntent:
    """A PaymentIntent together with what created it."""

    intent: dict[str, Any]
    idempotency_key: str | None
    request_id: str
    stored_at: float = 0.0  # the app's clock at creation: search sees it after the lag


class IntentStore:
    """PaymentIntents by id, in creation order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._intents: dict[str, StoredIntent] = {}

    def add(
        self,
        intent: dict[str, Any],
        idempotency_key: str | None,
        request_id: str,
        *,
        at: float = 0.0,
    ) -> None:
        """Store a new intent (a copy of it), created at `at` on the app's clock."""
        entry = StoredIntent(copy.deepcopy(intent), idempotency_key, request_id, at)
        with self._lock:
            self._intents[intent["id"]] = entry

    def get(self, intent_id: str) -> dict[str, Any] | None:
        """A copy of the intent, or ``None`` when no such id exists."""
        with self._lock:
            entry = self._intents.get(intent_id)
        return copy.deepcopy(entry.intent) if entry else None

    def transition(
        self, intent_id: str, change: Callable[[dict[str, Any]], Any]
    ) -> tuple[dict[str, Any], Any] | None:
        """Apply ``change`` to a working copy of the intent under the store's lock and keep
        the result, so concurrent moves of one intent never interleave; an exception from
        ``change`` keeps the intent as it was. Answers ``(copy of the new intent, what
        change returned)``, or ``None`` when no such id exists."""
        with self._lock:
            entry = self._intents.get(intent_id)
            if entry is None:
                return None
            intent = copy.deepcopy(entry.intent)
            result = change(intent)
            self._intents[intent_id] = replace(entry, intent=copy.deepcopy(intent))
            return copy.deepcopy(intent), result

    def matching(self, key: str, value: str, *, visible_before: float) -> list[dict[str, Any]]:
        """Intents whose ``metadata[key] == value`` created by `visible_before`, newest
        first (copies), as Stripe's search answers."""
        with self._lock:
            found = [
                e.intent
                for e in self._intents.values()
                if e.intent["metadata"].get(key) == value and e.stored_at <= visible_before
            ]
        return [copy.deepcopy(intent) for intent in reversed(found)]

    def all(self) -> list[StoredIntent]:
        """Every stored intent, oldest first (copies)."""
        with self._lock:
            entries = list(self._intents.values())
        return [copy.deepcopy(entry) for entry in entries]

    def __len__(self) -> int:
        with self._lock:
            return len(self._intents)

    def clear(self) -> None:
        """Forget every intent."""
        with self._lock:
            self._intents.clear()


class Decision(enum.Enum):
    """What to do with a request that carries an idempotency key."""

    NEW = "new"  # first use: the caller now holds the key and must complete() or release() it
    REPLAY = "replay"  # same parameters seen before: answer the stored response
    MISMATCH = "mismatch"  # key already used with other parameters
    IN_FLIGHT = "in_flight"  # the first request with this key is still being processed


@dataclass(frozen=True)
class Claim:
    """Result of :meth:`IdempotencyStore.begin`."""

    decision: Decision
    response: StoredResponse | None = None


@dataclass
class _Entry:
    fingerprint: Hashable
    response: StoredResponse | None  # None while in flight
    stored_at: float
    first_seen: float  # when the key was first used: its age, for expiry


@dataclass(frozen=True)
class KeyInfo:
    """What ``GET /_standin/idempotency`` shows of one key."""

    key: str
    age_seconds: float
    status: int | None  # None while in flight


class IdempotencyStore:
    """Idempotency keys scoped per API key, Stripe style.

    Only saved results are replayed; a key whose request failed validation, conflicted or
    hit a fault before executing is released, so a retry runs again. Keys are forgotten
    ``ttl_seconds`` after their first use, or when :meth:`expire` says so (Stripe may prune
    a key once it is 24 hours old).
    """

    def __init__(
        self,
        ttl_seconds: float = IDEMPOTENCY_TTL_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, str], _Entry] = {}
        self._ttl = ttl_seconds
        self._clock = clock

    @staticmethod
    def scope_for(api_key: str) -> str:
        """Scope name for an API key (a digest, so the key itself is never kept)."""
        return hashlib.sha256(api_key.encode()).hexdigest()[:16]

    def begin(self, scope: str, key: str, fingerprint: Hashable) -> Claim:
        """Look the key up and, if unused, claim it for the caller."""
        now = self._clock()
        with self._lock:
            entry = self._entries.get((scope, key))
            if entry is not None and entry.response is not None:
                entry = None if now - entry.first_seen >= self._ttl else entry  # expired: afresh
            if entry is None:
                self._entries[(scope, key)] = _Entry(fingerprint, None, now, now)
                return Claim(Decision.NEW)
            if entry.response is None:
                return Claim(Decision.IN_FLIGHT)
            if entry.fingerprint != fingerprint:
                return Claim(Decision.MISMATCH)
            return Claim(Decision.REPLAY, entry.response)

    def complete(self, scope: str, key: str, response: StoredResponse) -> None:
        """Save the result of a claimed key; later requests replay it.

        A claim dropped by :meth:`clear` meanwhile (an admin reset) is not resurrected.
        """
        with self._lock:
            entry = self._entries.get((scope, key))
            if entry is None:
                return
            entry.response = response
            entry.stored_at = self._clock()

    def release(self, scope: str, key: str) -> None:
        """Give up a claimed key without saving anything (the request may be retried)."""
        with self._lock:
            entry = self._entries.get((scope, key))
            if entry is not None and entry.response is None:
                del self._entries[(scope, key)]

    def expire(self, *, key: str | None = None, older_than_seconds: float | None = None) -> int:
        """Forget saved results: of ``key`` (under every API key), or of every key first
        used at least ``older_than_seconds`` ago; returns how many were forgotten.

        A request still in flight keeps its key: it is executing, and will save its result.
        """
        if (key is None) == (older_than_seconds is None):
            raise ValueError("give exactly one of key and older_than_seconds")
        now = self._clock()
        with self._lock:
            doomed = [
                name
                for name, entry in self._entries.items()
                if entry.response is not None
                and (
                    name[1] == key
                    if key is not None
                    else now - entry.first_seen >= float(older_than_seconds or 0.0)
                )
            ]
            for name in doomed:
                del self._entries[name]
        return len(doomed)

    def held(self) -> list[KeyInfo]:
        """Every key held, with its age and saved status, oldest first."""
        now = self._clock()
        with self._lock:
            entries = sorted(self._entries.items(), key=lambda item: item[1].first_seen)
            return [
                KeyInfo(name[1], now - e.first_seen, e.response.status if e.response else None)
                for name, e in entries
            ]

    def in_flight(self) -> int:
        """How many claimed keys have no result yet."""
        with self._lock:
            return sum(1 for entry in self._entries.values() if entry.response is None)

    def __len__(self) -> int:
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Forget every key (in-flight claims included)."""
        with self._lock:
            self._entries.clear()
