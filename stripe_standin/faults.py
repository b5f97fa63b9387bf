"""Fault injection: random faults from seeded rates, and scripted answers for create requests."""

from __future__ import annotations

import enum
import random
import threading
from collections import deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any

from stripe_standin.errors import StripeError
from stripe_standin.headers import header_problem


class Fault(enum.Enum):
    """A fault applied to one API request."""

    DROP = "drop"  # close the connection before doing anything
    FAIL_5XX = "fail_5xx"  # answer 500 api_error, nothing stored
    FAIL_429 = "fail_429"  # answer 429 rate limit, nothing stored
    LOSE_RESPONSE = "lose_response"  # do the work and store it, then close without answering
    # Create the intent, then answer 500: what a saved 500 can hide (last, so that a seed
    # draws the other faults as before).
    CREATE_THEN_5XX = "create_then_5xx"


RATE_FIELDS = ("drop", "fail_5xx", "fail_429", "lose_response", "create_then_5xx")
SWITCH_FIELDS = ("save_5xx",)
DURATION_FIELDS = ("latency_ms", "search_lag_ms")


class ConfigError(ValueError):
    """A setting that is out of range or of the wrong type; ``param`` names where, if known."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


@dataclass(frozen=True)
class FaultSettings:
    """Latency and fault rates; rates are fractions in [0, 1] whose sum is at most 1.

    ``save_5xx``: a 5xx answered by a create that began executing (an injected ``fail_5xx``
    on a create with a new idempotency key, a scripted 5xx, ``create_then_5xx``) is saved
    against the key and replayed, as Stripe does; false releases the key instead.
    ``search_lag_ms``: an intent is found by search only this long after its creation
    (Stripe's search is eventually consistent)."""

    latency_ms: int = 0
    drop: float = 0.0
    fail_5xx: float = 0.0
    fail_429: float = 0.0
    lose_response: float = 0.0
    create_then_5xx: float = 0.0
    save_5xx: bool = True
    search_lag_ms: int = 0

    def __post_init__(self) -> None:
        for name in DURATION_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an integer, got {value!r}")
            if value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}")
        if not isinstance(self.save_5xx, bool):
            raise ConfigError(f"save_5xx must be true or false, got {self.save_5xx!r}")
        for name in RATE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}")
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}")
            object.__setattr__(self, name, float(value))
        total = sum(float(getattr(self, name)) for name in RATE_FIELDS)
        if total > 1.0 + 1e-9:
            raise ConfigError(f"fault rates add up to {total:g}; they must add up to at most 1")

    def with_changes(self, changes: Mapping[str, Any]) -> FaultSettings:
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        unknown = sorted(set(changes) - {*DURATION_FIELDS, *RATE_FIELDS, *SWITCH_FIELDS})
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **dict(changes))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


class FaultInjector:
    """Decides, per request, which fault (if any) applies; seeded, so runs are repeatable."""

    def __init__(self, settings: FaultSettings, seed: int) -> None:
        self._lock = threading.Lock()
        self._settings = settings
        self._seed = seed
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not cryptography

    @property
    def settings(self) -> FaultSettings:
        """The settings in force."""
        with self._lock:
            return self._settings

    @property
    def seed(self) -> int:
        """Seed the random sequence started from."""
        with self._lock:
            return self._seed

    def update(self, changes: Mapping[str, Any]) -> FaultSettings:
        """Change some settings at runtime; ``seed`` restarts the random sequence."""
        changes = dict(changes)
        seed = changes.pop("seed", None)
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be an integer, got {seed!r}")
        with self._lock:
            self._settings = self._settings.with_changes(changes)
            if seed is not None:
                self._seed = seed
                self._random.seed(seed)
            return self._settings

    def reset(self, settings: FaultSettings, seed: int) -> None:
        """Back to the given settings and a fresh sequence from ``seed``."""
        with self._lock:
            self._settings = settings
            self._seed = seed
            self._random.seed(seed)

    def decide(self) -> Fault | None:
        """Draw once and map the draw onto the rates (in the order of :class:`Fault`)."""
        with self._lock:
            draw = self._random.random()
            settings = self._settings
        threshold = 0.0
        for fault in Fault:
            threshold += float(getattr(settings, fault.value))
            if draw < threshold:
                return fault
        return None


@dataclass(frozen=True)
class ScriptedFault:
    """A scripted fault (``drop``, ``lose_response``, ``create_then_5xx``) for one create."""

    fault: Fault


ScriptEntry = StripeError | ScriptedFault


def parse_script_entry(raw: Any) -> ScriptEntry:
    """Turn one JSON entry of ``POST /_standin/script`` into a script entry.

    ``{"status": 402, "error": {"type": ..., "message": ..., "code"?, "param"?, ...},
    "headers"?: {...}}`` answers that error; ``{"fault": "drop" | "lose_response"}`` applies
    that network fault; ``{"fault": "create_then_5xx"}`` creates the intent, then answers a
    500 (saved against the key unless ``save_5xx`` is off).
    """
    if not isinstance(raw, dict):
        raise ConfigError(f"script entries must be objects, got {raw!r}")
    if "fault" in raw:
        allowed = {Fault.DROP.value, Fault.LOSE_RESPONSE.value, Fault.CREATE_THEN_5XX.value}
        if raw["fault"] not in allowed or set(raw) != {"fault"}:
            raise ConfigError(
                'a fault entry is {"fault": "drop" | "lose_response" | "create_then_5xx"}: '
                f"{raw!r}"
            )
        return ScriptedFault(Fault(raw["fault"]))
    status, error, headers = raw.get("status"), raw.get("error"), raw.get("headers", {})
    if set(raw) - {"status", "error", "headers"}:
        raise ConfigError(
            f"unknown keys in script entry: {sorted(set(raw) - {'status', 'error', 'headers'})}"
        )
    if isinstance(status, bool) or not isinstance(status, int) or not 400 <= status <= 599:
        raise ConfigError(f"status must be an integer between 400 and 599, got {status!r}")
    if not isinstance(error, dict):
        raise ConfigError("error must be an object with at least type and message")
    if not isinstance(error.get("type"), str) or not isinstance(error.get("message"), str):
        raise ConfigError("error.type and error.message must be strings")
    if not isinstance(headers, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in headers.items()
    ):
        raise ConfigError("headers must map strings to strings")
    problem = header_problem(headers)
    if problem:
        raise ConfigError(problem, param="headers")
    extra = {k: v for k, v in error.items() if k not in ("type", "message", "code", "param")}
    return StripeError(
        status,
        error["type"],
        error["message"],
        code=error.get("code"),
        param=error.get("param"),
        extra=extra,
        headers=headers,
    )


class Script:
    """Queue of scripted answers consumed, in order, by create requests that would execute."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._entries: deque[ScriptEntry] = deque()

    def load(self, entries: list[ScriptEntry], *, append: bool = False) -> int:
        """Replace (or extend) the pending entries; returns how many are pending."""
        with self._lock:
            if not append:
                self._entries.clear()
            self._entries.extend(entries)
            return len(self._entries)

    def pop(self) -> ScriptEntry | None:
        """Next entry, or ``None`` when the script is exhausted."""
        with self._lock:
            return self._entries.popleft() if self._entries else None

    def pending(self) -> int:
        """How many entries are left."""
        with self._lock:
            return len(self._entries)

    def clear(self) -> None:
        """Drop every pending entry."""
        with self._lock:
            self._entries.clear()
