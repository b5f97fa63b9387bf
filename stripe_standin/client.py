"""Small urllib client for the ``/_standin/`` admin endpoints, plus script-entry builders."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from typing import Any


class StandinAdminError(RuntimeError):
    """An admin endpoint answered an error (``status`` and ``message`` from its body)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"stand-in admin answered {status}: {message}")
        self.status = status
        self.message = message


class StandinAdmin:
    """Talks to one stand-in's admin endpoints, e.g. ``StandinAdmin("http://127.0.0.1:12111")``."""

    def __init__(self, base_url: str, timeout: float = 5.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def health(self) -> bool:
        """Whether the stand-in answers at all."""
        try:
            return bool(self._call("GET", "health").get("ok"))
        except (OSError, StandinAdminError):
            return False

    def stats(self) -> dict[str, Any]:
        """Counters: requests by route, responses by status, faults by type, replays..."""
        return self._call("GET", "stats")

    def payment_intents(self) -> list[dict[str, Any]]:
        """Every stored intent: ``{"idempotency_key", "request_id", "payment_intent"}`` entries."""
        data: list[dict[str, Any]] = self._call("GET", "payment_intents")["data"]
        return data

    def intents_with_metadata(self, key: str, value: str) -> list[dict[str, Any]]:
        """The stored PaymentIntent objects whose ``metadata[key] == value``."""
        return [
            entry["payment_intent"]
            for entry in self.payment_intents()
            if entry["payment_intent"]["metadata"].get(key) == value
        ]

    def requests(self, payment_id: str | None = None) -> list[dict[str, Any]]:
        """Create and search requests (of one payment if given), in order of start."""
        name = (
            "requests"
            if payment_id is None
            else f"requests?payment_id={urllib.parse.quote(payment_id)}"
        )
        data: list[dict[str, Any]] = self._call("GET", name)["data"]
        return data

    def idempotency_keys(self) -> list[dict[str, Any]]:
        """Every key held: ``{"key", "age_seconds", "status"}``."""
        data: list[dict[str, Any]] = self._call("GET", "idempotency")["data"]
        return data

    def expire_keys(
        self, *, key: str | None = None, older_than_seconds: float | None = None
    ) -> int:
        """Forget one key's saved result, or those of every key at least this old."""
        payload = {"key": key} if key is not None else {"older_than_seconds": older_than_seconds}
        return int(self._call("POST", "idempotency/expire", payload)["expired"])

    def config(self) -> dict[str, Any]:
        """Fault settings in force and the seed."""
        return self._call("GET", "config")

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change some of latency_ms, drop, fail_5xx, fail_429, lose_response,
        create_then_5xx, save_5xx, search_lag_ms, seed."""
        return self._call("POST", "config", changes)

    def script(self, responses: Sequence[Mapping[str, Any]], *, append: bool = False) -> int:
        """Queue answers for the next create requests; returns how many are pending."""
        payload = {"responses": list(responses), "append": append}
        return int(self._call("POST", "script", payload)["pending"])

    def script_pending(self) -> int:
        """How many scripted answers have not been used yet."""
        return int(self._call("GET", "script")["pending"])

    def events(self) -> list[dict[str, Any]]:
        """Every event, oldest first."""
        data: list[dict[str, Any]] = self._call("GET", "events")["data"]
        return data

    def webhooks(self) -> dict[str, Any]:
        """Webhook settings (``secret_set``, never the secret), ``stats`` and ``recent``."""
        return self._call("GET", "webhooks")

    def webhook_stats(self) -> dict[str, int]:
        """Delivery counters: events, deliveries, attempts, successes, failures, given_up,
        duplicates, drops, reorders, bad_signatures, overflows, not_sent, pending."""
        stats: dict[str, int] = self.webhooks()["stats"]
        return stats

    def configure_webhooks(self, **changes: Any) -> dict[str, Any]:
        """Change some of url, enabled, duplicate, drop, bad_signature, reorder_max_seconds,
        retry_base_seconds, max_attempts, max_age_seconds, timeout_seconds, secret, seed."""
        return self._call("POST", "webhooks", changes)

    def authenticate(self, intent_id: str, *, succeed: bool) -> dict[str, Any]:
        """Complete (or fail) 3-D Secure of an intent in requires_action; the intent after."""
        name = f"payment_intents/{urllib.parse.quote(intent_id)}/3ds"
        return self._call("POST", name, {"succeed": succeed})

    def settle(self, intent_id: str, *, succeed: bool) -> dict[str, Any]:
        """Settle (or fail) the asynchronous payment of a processing intent; the intent after."""
        name = f"payment_intents/{urllib.parse.quote(intent_id)}/settle"
        return self._call("POST", name, {"succeed": succeed})

    def expire_authorization(self, intent_id: str) -> dict[str, Any]:
        """Stripe gives up the uncaptured authorisation of a requires_capture intent now:
        canceled with cancellation_reason automatic; the intent after."""
        name = f"payment_intents/{urllib.parse.quote(intent_id)}/expire"
        return self._call("POST", name, {})

    def authorization_window(self) -> float:
        """Seconds a new uncaptured authorisation stays capturable."""
        return float(self._call("GET", "authorizations")["authorization_window_seconds"])

    def set_authorization_window(self, seconds: float) -> float:
        """Change the window of authorisations made from now on; answers the new one."""
        payload = {"authorization_window_seconds": seconds}
        return float(self._call("POST", "authorizations", payload)["authorization_window_seconds"])

    def refunds(self) -> list[dict[str, Any]]:
        """Every refund, oldest first."""
        data: list[dict[str, Any]] = self._call("GET", "refunds")["data"]
        return data

    def refunds_pending(self) -> bool:
        """Whether new refunds stay pending until settled."""
        return bool(self._call("GET", "refunds/config")["pending"])

    def set_refunds_pending(self, pending: bool) -> bool:
        """New refunds stay pending (True) or succeed at once (False); answers the setting."""
        return bool(self._call("POST", "refunds/config", {"pending": pending})["pending"])

    def settle_refund(
        self, refund_id: str, *, succeed: bool, failure_reason: str | None = None
    ) -> dict[str, Any]:
        """A pending refund succeeds, or fails with Stripe's ``failure_reason`` (default
        declined); the refund after."""
        payload: dict[str, Any] = {"succeed": succeed}
        if failure_reason is not None:
            payload["failure_reason"] = failure_reason
        return self._call("POST", f"refunds/{urllib.parse.quote(refund_id)}/settle", payload)

    def reset(self) -> None:
        """Forget intents, keys, counters, script; restore the start-up settings."""
        self._call("POST", "reset", {})

    def _call(
        self, method: str, name: str, payload: Mapping[str, Any] | None = None
    ) -> dict[str, Any]:
        data = None if payload is None else json.dumps(payload).encode()
        request = urllib.request.Request(  # noqa: S310 - URL built from our own base_url
            f"{self.base_url}/_standin/{name}",
            data=data,
            method=method,
            headers={"Content-Type": "application/json"} if data is not None else {},
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:  # noqa: S310
                result: dict[str, Any] = json.loads(response.read())
                return result
        except urllib.error.HTTPError as exc:
            with exc:
                try:
                    message = json.loads(exc.read())["error"]["message"]
                except (ValueError, KeyError, TypeError):
                    message = exc.reason
            raise StandinAdminError(exc.code, str(message)) from None


# --- script entries ---------------------------------------------------------------------------


def scripted_error(
    status: int,
    error_type: str,
    message: str,
    *,
    code: str | None = None,
    param: str | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A script entry answering this Stripe error (``extra`` e.g. ``decline_code=...``)."""
    error: dict[str, Any] = {"type": error_type, "message": message, **extra}
    if code is not None:
        error["code"] = code
    if param is not None:
        error["param"] = param
    return {"status": status, "error": error}


def card_declined(decline_code: str = "generic_decline") -> dict[str, Any]:
    """402 card_error / card_declined, a permanent failure."""
    return scripted_error(
        402,
        "card_error",
        "Your card was declined.",
        code="card_declined",
        decline_code=decline_code,
    )


def api_error() -> dict[str, Any]:
    """500 api_error, a transient failure."""
    return scripted_error(500, "api_error", "An unknown error occurred.")


def rate_limit() -> dict[str, Any]:
    """429 rate limit, a transient failure."""
    return scripted_error(
        429, "invalid_request_error", "Request rate limit exceeded.", code="rate_limit"
    )


def drop() -> dict[str, Any]:
    """Close the connection without doing anything (the SDK raises APIConnectionError)."""
    return {"fault": "drop"}


def create_then_5xx() -> dict[str, Any]:
    """Create and store the intent, then answer 500 (saved against the key, like Stripe)."""
    return {"fault": "create_then_5xx"}


def lose_response() -> dict[str, Any]:
    """Create and store the intent, then close without answering."""
    return {"fault": "lose_response"}
