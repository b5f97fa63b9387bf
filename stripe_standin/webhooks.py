"""Webhook delivery: each event POSTed to the configured endpoint, signed as Stripe signs,
at least once.

Signature (Stripe's scheme, checked by ``stripe.Webhook.construct_event``): header
``Stripe-Signature: t=<unix time>,v1=<hex HMAC-SHA256(secret, "<t>.<payload>")>``; every
attempt is signed afresh with the time it is sent.

Delivery runs on one background thread (River's loop shape: :meth:`WebhookDeliverer.run`
sleeps, stops on :meth:`stop` and calls :meth:`run_once`, which tests call directly). The API
only hands events over (:meth:`offer`, never blocking: a full inbox counts ``overflows`` and the
event is not delivered). An attempt succeeds on a 2xx answer; any other status, a refused
connection or a timeout is retried after ``retry_base * 2**(n-1)`` seconds (n = attempts so
far), as Stripe backs off exponentially, until ``max_attempts`` attempts or ``max_age``
seconds since the event; then the delivery is given up. Redirects are not followed.

Faults, each drawn per event from a seeded sequence:

* ``duplicate``: the event is delivered twice (two independent deliveries of one event id);
* ``reorder_max_seconds``: each delivery waits a random 0..N seconds before its first attempt,
  so later events can arrive first (counted as ``reorders`` when the wait is positive);
* ``drop``: the event is never sent, like an endpoint that was down past the retry window;
* ``bad_signature``: the first attempt is signed with a wrong secret; its retry is good.

Disabled (``enabled`` false) or without a URL, new events are not queued (their
``pending_webhooks`` is 0) and nothing queued is sent until delivery is enabled again.
"""

from __future__ import annotations

import hashlib
import heapq
import hmac
import http.client
import itertools
import json
import queue
import random
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, replace
from typing import Any
from urllib.parse import urlsplit

from stripe_standin.faults import ConfigError
from stripe_standin.intents import random_token

USER_AGENT = "Stripe/1.0 (+https://stripe.com/docs/webhooks)"
INBOX_SIZE = 10_000
RECENT_ATTEMPTS = 1_000
#: Event ids remembered as acknowledged (so a duplicate's success is not counted twice).
MAX_ACKNOWLEDGED = 200_000
#: Stripe retries for up to three days in live mode.
DEFAULT_MAX_AGE_SECONDS = 3 * 24 * 60 * 60

RATE_FIELDS = ("duplicate", "drop", "bad_signature")
STAT_NAMES = (
    "events",
    "deliveries",
    "attempts",
    "successes",
    "failures",
    "given_up",
    "duplicates",
    "drops",
    "reorders",
    "bad_signatures",
    "overflows",
    "not_sent",
)


def sign(payload: bytes, secret: str, timestamp: int) -> str:
    """The ``Stripe-Signature`` header value for a payload sent at ``timestamp``."""
    signed = f"{timestamp}.".encode() + payload
    digest = hmac.new(secret.encode(), signed, hashlib.sha256).hexdigest()
    return f"t={timestamp},v1={digest}"


def check_url(url: str | None) -> None:
    """An endpoint must be an absolute http(s) URL."""
    if url is None:
        return
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(f"webhook url must be an http:// or https:// URL, got {url!r}")


@dataclass(frozen=True)
class WebhookSettings:
    """Where and how events are delivered (the secret is kept apart and never shown)."""

    url: str | None = None
    enabled: bool = True
    retry_base_seconds: float = 5.0
    max_attempts: int = 4  # Stripe's test mode: the first attempt and three retries
    max_age_seconds: float = DEFAULT_MAX_AGE_SECONDS
    timeout_seconds: float = 10.0
    duplicate: float = 0.0
    drop: float = 0.0
    bad_signature: float = 0.0
    reorder_max_seconds: float = 0.0

    def __post_init__(self) -> None:
        if self.url is not None and not isinstance(self.url, str):
            raise ConfigError(f"url must be a string or null, got {self.url!r}", param="url")
        try:
            check_url(self.url)
        except ConfigError as exc:
            raise ConfigError(str(exc), param="url") from None
        if not isinstance(self.enabled, bool):
            raise ConfigError(f"enabled must be true or false, got {self.enabled!r}")
        for name in ("retry_base_seconds", "max_age_seconds", "timeout_seconds"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
                raise ConfigError(f"{name} must be a positive number, got {value!r}", param=name)
            object.__setattr__(self, name, float(value))
        value = self.reorder_max_seconds
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise ConfigError(
                f"reorder_max_seconds must be a number >= 0, got {value!r}",
                param="reorder_max_seconds",
            )
        object.__setattr__(self, "reorder_max_seconds", float(value))
        attempts = self.max_attempts
        if isinstance(attempts, bool) or not isinstance(attempts, int) or attempts < 1:
            raise ConfigError(
                f"max_attempts must be an integer >= 1, got {attempts!r}", param="max_attempts"
            )
        for name in RATE_FIELDS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise ConfigError(f"{name} must be a number, got {value!r}", param=name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be between 0 and 1, got {value}", param=name)
            object.__setattr__(self, name, float(value))

    def with_changes(self, changes: Mapping[str, Any]) -> WebhookSettings:
        """A copy with some fields changed; unknown names raise :class:`ConfigError`."""
        unknown = sorted(set(changes) - set(asdict(self)))
        if unknown:
            raise ConfigError(f"unknown webhook setting(s): {', '.join(unknown)}")
        return replace(self, **dict(changes))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready view."""
        return asdict(self)


@dataclass
class _Delivery:
    event_id: str
    event_type: str
    payload: bytes
    created: float  # monotonic time the event was handed over
    duplicate: bool = False
    bad_signature_first: bool = False
    attempts: int = 0


@dataclass(frozen=True)
class Attempt:
    """One HTTP attempt, for ``GET /_standin/webhooks`` (``recent``)."""

    event_id: str
    type: str
    attempt: int
    duplicate: bool
    signature: str  # "good" or "bad"
    status: int | None  # None: no HTTP answer (refused, timed out)
    error: str | None
    outcome: str  # "success", "retry" or "given_up"


Sender = Callable[[str, bytes, dict[str, str], float], int]


def http_post(url: str, body: bytes, headers: dict[str, str], timeout: float) -> int:
    """POST once without following redirects; the status, or an ``OSError``."""
    parts = urlsplit(url)
    connection_class = (
        http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    )
    connection = connection_class(parts.hostname or "", parts.port, timeout=timeout)
    path = parts.path or "/"
    if parts.query:
        path += "?" + parts.query
    try:
        connection.request("POST", path, body=body, headers=headers)
        response = connection.getresponse()
        response.read()
        return int(response.status)
    except http.client.HTTPException as exc:
        raise OSError(f"{type(exc).__name__}: {exc}") from exc
    finally:
        connection.close()


class WebhookDeliverer:
    """Queues, signs, sends and retries webhook deliveries for one stand-in."""

    def __init__(
        self,
        settings: WebhookSettings,
        secret: str | None,
        *,
        seed: int = 0,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        sender: Sender = http_post,
        on_delivered: Callable[[str], None] | None = None,
        inbox_size: int = INBOX_SIZE,
    ) -> None:
        if settings.url is not None and not secret:
            raise ConfigError("a webhook url needs a signing secret")
        self._lock = threading.Lock()
        self._settings = settings
        self._secret = secret
        self._seed = seed
        self._random = random.Random(seed)  # noqa: S311 - fault injection, not cryptography
        self._clock = clock
        self._wall_clock = wall_clock
        self._sender = sender
        self._on_delivered = on_delivered
        self._inbox: queue.Queue[tuple[float, _Delivery]] = queue.Queue(inbox_size)
        self._due: list[tuple[float, int, _Delivery]] = []
        self._order = itertools.count()
        self._counts: Counter[str] = Counter()
        self._recent: deque[Attempt] = deque(maxlen=RECENT_ATTEMPTS)
        self._acknowledged: OrderedDict[str, None] = OrderedDict()  # bounded, oldest out
        self._in_progress = 0
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._generation = 0

    # --- settings --------------------------------------------------------------------------

    @property
    def settings(self) -> WebhookSettings:
        """The settings in force."""
        with self._lock:
            return self._settings

    @property
    def has_secret(self) -> bool:
        """Whether a signing secret is set (the secret itself is never shown)."""
        with self._lock:
            return bool(self._secret)

    def update(self, changes: Mapping[str, Any]) -> WebhookSettings:
        """Change settings at runtime: url, enabled, faults, retry policy; ``secret`` sets
        the signing secret; ``seed`` restarts the fault sequence."""
        changes = dict(changes)
        secret = changes.pop("secret", None)
        seed = changes.pop("seed", None)
        if secret is not None and (not isinstance(secret, str) or secret == ""):
            raise ConfigError("secret must be a non-empty string", param="secret")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"seed must be an integer, got {seed!r}", param="seed")
        with self._lock:
            settings = self._settings.with_changes(changes)
            if settings.url is not None and not (secret or self._secret):
                raise ConfigError("a webhook url needs a signing secret", param="secret")
            self._settings = settings
            if secret is not None:
                self._secret = secret
            if seed is not None:
                self._seed = seed
                self._random.seed(seed)
        self._wake.set()
        return settings

    def reset(self, settings: WebhookSettings, secret: str | None, seed: int) -> None:
        """Back to start-up settings; forget queued deliveries and counters."""
        with self._lock:
            self._settings = settings
            self._secret = secret
            self._seed = seed
            self._random.seed(seed)
            self._due.clear()
            self._counts.clear()
            self._recent.clear()
            self._acknowledged.clear()
            self._generation += 1
            while True:
                try:
                    self._inbox.get_nowait()
                except queue.Empty:
                    break

    # --- the API side ----------------------------------------------------------------------

    def offer(self, event: dict[str, Any]) -> bool:
        """Hand an event over for delivery, never blocking; whether a webhook is now pending."""
        now = self._clock()
        with self._lock:
            settings = self._settings
            if settings.url is None or not settings.enabled:
                self._counts["not_sent"] += 1
                return False
        # As the endpoint will see it: one webhook pending, this one.
        payload = json.dumps({**event, "pending_webhooks": 1}, indent=2, ensure_ascii=False)
        with self._lock:
            self._counts["events"] += 1
            draws = [self._random.random() for _ in range(3)]
            delays = [self._random.uniform(0.0, settings.reorder_max_seconds) for _ in range(2)]
            bad = self._random.random() < settings.bad_signature
        if draws[0] < settings.drop:
            self._count("drops")
            return True  # never acknowledged: pending_webhooks stays 1, as after giving up
        copies = 2 if draws[1] < settings.duplicate else 1
        for index in range(copies):
            delivery = _Delivery(
                event["id"],
                event["type"],
                (payload + "\n").encode(),
                now,
                duplicate=index > 0,
                bad_signature_first=bad and index == 0,
            )
            try:
                self._inbox.put_nowait((now + delays[index], delivery))
            except queue.Full:
                self._count("overflows")
                continue
            self._count("deliveries")
            if index > 0:
                self._count("duplicates")
            if delays[index] > 0:
                self._count("reorders")
        self._wake.set()
        return True

    # --- the loop ----------------------------------------------------------------------------

    def run_once(self) -> float | None:
        """Send every delivery that is due; answers the seconds until the next one is due
        (``None``: nothing to send, queued or not, while delivery is disabled)."""
        self._take_inbox()
        while True:
            with self._lock:
                settings = self._settings
                if settings.url is None or not settings.enabled or not self._due:
                    return None  # nothing to send until an event or a change wakes us
                due_at, _, delivery = self._due[0]
                if due_at > self._clock():
                    return self._until_next()
                heapq.heappop(self._due)
                self._in_progress += 1
                generation = self._generation
                secret = self._secret or ""
            try:
                self._attempt(delivery, settings, secret, generation)
            finally:
                with self._lock:
                    self._in_progress -= 1

    def run(self) -> None:
        """Deliver until :meth:`stop`: sleep until the next delivery is due or an event comes."""
        while not self._stopping.is_set():
            wait = self.run_once()
            self._wake.wait(timeout=1.0 if wait is None else min(max(wait, 0.0), 1.0))
            self._wake.clear()

    def start(self) -> None:
        """Run the loop on a daemon thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self.run, name="webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the loop (an attempt in progress finishes first, up to its timeout)."""
        self._stopping.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    # --- what the admin endpoint shows -----------------------------------------------------

    def snapshot(self) -> dict[str, Any]:
        """Settings (without the secret), counters and the most recent attempts."""
        with self._lock:
            counts = {name: self._counts[name] for name in STAT_NAMES}
            pending = len(self._due) + self._inbox.qsize() + self._in_progress
            recent = [asdict(a) for a in self._recent]
            return {
                **self._settings.as_dict(),
                "secret_set": bool(self._secret),
                "seed": self._seed,
                "stats": {**counts, "pending": pending},
                "recent": recent,
            }

    # --- internals ---------------------------------------------------------------------------

    def _count(self, name: str) -> None:
        with self._lock:
            self._counts[name] += 1

    def _until_next(self) -> float:
        return max(self._due[0][0] - self._clock(), 0.0)

    def _take_inbox(self) -> None:
        while True:
            try:
                due_at, delivery = self._inbox.get_nowait()
            except queue.Empty:
                return
            with self._lock:
                heapq.heappush(self._due, (due_at, next(self._order), delivery))

    def _attempt(
        self, delivery: _Delivery, settings: WebhookSettings, secret: str, generation: int
    ) -> None:
        delivery.attempts += 1
        bad = delivery.bad_signature_first and delivery.attempts == 1
        signing_secret = "whsec_" + random_token(32) if bad else secret
        headers = {
            "Content-Type": "application/json; charset=utf-8",
            "User-Agent": USER_AGENT,
            "Cache-Control": "no-cache",
            "Stripe-Signature": sign(delivery.payload, signing_secret, int(self._wall_clock())),
        }
        status: int | None = None
        error: str | None = None
        try:
            status = self._sender(
                settings.url or "", delivery.payload, headers, settings.timeout_seconds
            )
        except OSError as exc:
            error = f"{type(exc).__name__}: {exc}"
        success = status is not None and 200 <= status < 300
        now = self._clock()
        delay = settings.retry_base_seconds * 2 ** (delivery.attempts - 1)
        retry = (
            not success
            and delivery.attempts < settings.max_attempts
            and now + delay - delivery.created <= settings.max_age_seconds
        )
        outcome = "success" if success else "retry" if retry else "given_up"
        first_success = False
        with self._lock:
            if generation != self._generation:
                return  # reset meanwhile: this delivery belongs to the past
            self._counts["attempts"] += 1
            if bad:
                self._counts["bad_signatures"] += 1
            self._counts["successes" if success else "failures"] += 1
            if outcome == "given_up":
                self._counts["given_up"] += 1
            if retry:
                heapq.heappush(self._due, (now + delay, next(self._order), delivery))
            if success and delivery.event_id not in self._acknowledged:
                self._acknowledged[delivery.event_id] = None
                while len(self._acknowledged) > MAX_ACKNOWLEDGED:
                    self._acknowledged.popitem(last=False)
                first_success = True
            self._recent.append(
                Attempt(
                    delivery.event_id,
                    delivery.event_type,
                    delivery.attempts,
                    delivery.duplicate,
                    "bad" if bad else "good",
                    status,
                    error,
                    outcome,
                )
            )
        if first_success and self._on_delivered is not None:
            self._on_delivered(delivery.event_id)
