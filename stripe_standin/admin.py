"""Test/admin endpoints under ``/_standin/`` (no API key, never faulted).

=======  ===========================  ==========================================================
GET      /_standin/health             ``{"ok": true}``
GET      /_standin/stats              request, response, fault and idempotency counters
GET      /_standin/payment_intents    every stored intent with the idempotency key that made it
GET      /_standin/requests           every create and search: ``{route, idempotency_key,
                                      payment_id, started, ended, outcome, status}`` in order
                                      of start (``?payment_id=`` for one payment's)
GET      /_standin/idempotency        every key held: ``{key, age_seconds, status}`` (status
                                      null while in flight)
POST     /_standin/idempotency/expire ``{"key": k}`` or ``{"older_than_seconds": s}``: forget
                                      saved results as Stripe may after 24 h; answers
                                      ``{"expired": n}``
GET      /_standin/config             fault settings in force and the seed
POST     /_standin/config             change some of latency_ms, drop, fail_5xx, fail_429,
                                      lose_response, create_then_5xx, save_5xx (true: a 5xx
                                      of a create that began executing is saved and replayed,
                                      as Stripe does), search_lag_ms, seed; answers the new
                                      settings
GET      /_standin/script             ``{"pending": n}``
POST     /_standin/script             ``{"responses": [...], "append"?: bool}``: answers for the
                                      next create requests, in order
GET      /_standin/events             every event, oldest first (no API key needed)
GET      /_standin/webhooks           webhook settings (never the secret: ``secret_set``),
                                      ``stats`` {events, deliveries, attempts, successes,
                                      failures, given_up, duplicates, drops, reorders,
                                      bad_signatures, overflows, not_sent, pending} and
                                      ``recent`` attempts
POST     /_standin/webhooks           change some of url, enabled, duplicate, drop,
                                      bad_signature, reorder_max_seconds, retry_base_seconds,
                                      max_attempts, max_age_seconds, timeout_seconds, secret,
                                      seed; answers as GET
POST     /_standin/payment_intents/   ``{"succeed": bool}``: the customer completes or fails
         {id}/3ds                     3-D Secure of an intent in requires_action
POST     /_standin/payment_intents/   ``{"succeed": bool}``: the asynchronous payment of a
         {id}/settle                  processing intent settles or fails
POST     /_standin/payment_intents/   ``{}``: Stripe gives up the uncaptured authorisation of a
         {id}/expire                  requires_capture intent now (canceled, reason automatic)
GET      /_standin/authorizations     ``{"authorization_window_seconds": s}``
POST     /_standin/authorizations     ``{"authorization_window_seconds": s}``: the window of
                                      authorisations made from now on; answers as GET
GET      /_standin/refunds            every refund, oldest first
GET      /_standin/refunds/config     ``{"pending": bool}``
POST     /_standin/refunds/config     ``{"pending": bool}``: new refunds stay pending (until
                                      settled) or succeed at once; answers as GET
POST     /_standin/refunds/{id}/      ``{"succeed": bool, "failure_reason"?: str}``: a pending
         settle                       refund succeeds or fails (failure_reason one of Stripe's,
                                      default declined); answers the refund
POST     /_standin/reset              forget everything, restore start-up settings
=======  ===========================  ==========================================================
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qsl

from stripe_standin import errors
from stripe_standin.app import Request, Response, StandinApp, json_body
from stripe_standin.errors import StripeError
from stripe_standin.faults import ConfigError, parse_script_entry
from stripe_standin.refunds import RefundStateError

PREFIX = "/_standin/"
_REFUND_SETTLE = re.compile(r"^refunds/([^/]+)/settle$")
_INTENT_ACTION = re.compile(r"^payment_intents/([^/]+)/(3ds|settle|expire)$")


class Admin:
    """Serves the admin endpoints of one :class:`StandinApp`."""

    def __init__(self, app: StandinApp) -> None:
        self.app = app

    def handle(self, request: Request) -> Response:
        """Answer one ``/_standin/...`` request."""
        name = request.path[len(PREFIX) :].rstrip("/")
        routes = {
            ("GET", "health"): self._health,
            ("GET", "stats"): self._stats,
            ("GET", "payment_intents"): self._payment_intents,
            ("GET", "requests"): self._requests,
            ("GET", "idempotency"): self._idempotency,
            ("POST", "idempotency/expire"): self._expire,
            ("GET", "config"): self._config,
            ("POST", "config"): self._set_config,
            ("GET", "script"): self._script_status,
            ("POST", "script"): self._set_script,
            ("POST", "reset"): self._reset,
            ("GET", "authorizations"): self._authorizations,
            ("POST", "authorizations"): self._set_authorizations,
            ("GET", "refunds"): self._refunds,
            ("GET", "refunds/config"): self._refund_config,
            ("POST", "refunds/config"): self._set_refund_config,
        }
        settle = _REFUND_SETTLE.match(name)
        if settle is not None:
            return self._settle_refund_reply(settle.group(1), request)
        action = _INTENT_ACTION.match(name)
        if action is not None:
            return self._intent_action_reply(action.group(1), action.group(2), request)
        routes.update(
            {
                ("GET", "events"): self._events,
                ("GET", "webhooks"): self._webhooks,
                ("POST", "webhooks"): self._set_webhooks,
            }
        )
        handler = routes.get((request.method, name))
        if handler is None:
            known = sorted({path for _, path in routes})
            if name in known:
                return _failure(405, f"{request.method} is not allowed on {request.path}")
            return _failure(404, f"no admin endpoint {request.path}; known: {', '.join(known)}")
        try:
            return _ok(handler(request))
        except ConfigError as exc:
            return _failure(400, str(exc), param=exc.param)

    def _health(self, _request: Request) -> dict[str, Any]:
        return {"ok": True}

    def _stats(self, _request: Request) -> dict[str, Any]:
        app = self.app
        return app.stats.snapshot(
            payment_intents=len(app.intents),
            idempotency_keys=len(app.idempotency),
            idempotency_keys_in_flight=app.idempotency.in_flight(),
            script_pending=app.script.pending(),
            events=len(app.events),
        )

    def _payment_intents(self, _request: Request) -> dict[str, Any]:
        data = [
            {
                "idempotency_key": entry.idempotency_key,
                "request_id": entry.request_id,
                "payment_intent": entry.intent,
            }
            for entry in self.app.intents.all()
        ]
        return {"object": "list", "count": len(data), "data": data}

    def _requests(self, request: Request) -> dict[str, Any]:
        payment_id = dict(parse_qsl(request.query)).get("payment_id")
        data = self.app.requests.entries(payment_id)
        return {"object": "list", "count": len(data), "data": data}

    def _idempotency(self, _request: Request) -> dict[str, Any]:
        data = [asdict(info) for info in self.app.idempotency.held()]
        return {"object": "list", "count": len(data), "data": data}

    def _expire(self, request: Request) -> dict[str, Any]:
        payload = _json_object(request)
        if set(payload) not in ({"key"}, {"older_than_seconds"}):
            raise ConfigError('expected {"key": "..."} or {"older_than_seconds": n}')
        key, age = payload.get("key"), payload.get("older_than_seconds")
        if "key" in payload and not isinstance(key, str):
            raise ConfigError("key must be a string", param="key")
        if "older_than_seconds" in payload and (
            isinstance(age, bool) or not isinstance(age, int | float) or age < 0
        ):
            raise ConfigError(
                "older_than_seconds must be a number >= 0", param="older_than_seconds"
            )
        expired = self.app.idempotency.expire(key=key, older_than_seconds=age)
        return {"expired": expired}

    def _config(self, _request: Request) -> dict[str, Any]:
        return {**self.app.faults.settings.as_dict(), "seed": self.app.faults.seed}

    def _set_config(self, request: Request) -> dict[str, Any]:
        changes = _json_object(request)
        self.app.faults.update(changes)
        return self._config(request)

    def _script_status(self, _request: Request) -> dict[str, Any]:
        return {"pending": self.app.script.pending()}

    def _set_script(self, request: Request) -> dict[str, Any]:
        payload = _json_object(request)
        unknown = set(payload) - {"responses", "append"}
        if unknown:
            raise ConfigError(f"unknown key(s): {', '.join(sorted(unknown))}")
        responses = payload.get("responses")
        if not isinstance(responses, list):
            raise ConfigError('expected {"responses": [...]}')
        append = payload.get("append", False)
        if not isinstance(append, bool):
            raise ConfigError("append must be true or false")
        entries = []
        for index, item in enumerate(responses):
            try:
                entries.append(parse_script_entry(item))
            except ConfigError as exc:
                where = f"responses[{index}]"
                param = f"{where}.{exc.param}" if exc.param else where
                raise ConfigError(f"{where}: {exc}", param=param) from None
        # Only once every entry is valid: a rejected script changes nothing.
        return {"pending": self.app.script.load(entries, append=append)}

    def _events(self, _request: Request) -> dict[str, Any]:
        data = self.app.events.all()
        return {"object": "list", "count": len(data), "data": data}

    def _webhooks(self, _request: Request) -> dict[str, Any]:
        return self.app.webhooks.snapshot()

    def _set_webhooks(self, request: Request) -> dict[str, Any]:
        self.app.webhooks.update(_json_object(request))
        return self._webhooks(request)

    def _refunds(self, _request: Request) -> dict[str, Any]:
        data = self.app.refunds.all()
        return {"object": "list", "count": len(data), "data": data}

    def _refund_config(self, _request: Request) -> dict[str, Any]:
        return {"pending": self.app.refunds.pending}

    def _set_refund_config(self, request: Request) -> dict[str, Any]:
        payload = _json_object(request)
        if set(payload) != {"pending"} or not isinstance(payload["pending"], bool):
            raise ConfigError('expected {"pending": true} or {"pending": false}', param="pending")
        self.app.refunds.pending = payload["pending"]
        return self._refund_config(request)

    def _settle_refund_reply(self, refund_id: str, request: Request) -> Response:
        if request.method != "POST":
            return _failure(405, f"{request.method} is not allowed on {request.path}")
        try:
            payload = _json_object(request)
            unknown = set(payload) - {"succeed", "failure_reason"}
            succeed = payload.get("succeed")
            reason = payload.get("failure_reason")
            if unknown or not isinstance(succeed, bool):
                raise ConfigError('expected {"succeed": bool, "failure_reason"?: "..."}')
            if reason is not None and not isinstance(reason, str):
                raise ConfigError("failure_reason must be a string", param="failure_reason")
            refund = self.app.refunds.settle(refund_id, succeed=succeed, failure_reason=reason)
        except (ConfigError, RefundStateError) as exc:
            return _failure(400, str(exc), param=getattr(exc, "param", None))
        except StripeError as exc:
            return Response(exc.status, json_body(exc.body()))
        return _ok(refund)

    def _intent_action_reply(self, intent_id: str, action: str, request: Request) -> Response:
        if request.method != "POST":
            return _failure(405, f"{request.method} is not allowed on {request.path}")
        try:
            return _ok(self._intent_action(intent_id, action, request))
        except ConfigError as exc:
            return _failure(400, str(exc), param=exc.param)
        except StripeError as exc:
            return Response(exc.status, json_body(exc.body()))

    def _authorizations(self, _request: Request) -> dict[str, Any]:
        return {"authorization_window_seconds": self.app.flow.authorization_window}

    def _set_authorizations(self, request: Request) -> dict[str, Any]:
        payload = _json_object(request)
        name = "authorization_window_seconds"
        if set(payload) != {name}:
            raise ConfigError(f'expected {{"{name}": seconds}}')
        value = payload[name]
        if isinstance(value, bool) or not isinstance(value, int | float) or not value > 0:
            raise ConfigError(f"{name} must be a positive number of seconds", param=name)
        self.app.flow.authorization_window = value
        return self._authorizations(request)

    def _intent_action(self, intent_id: str, action: str, request: Request) -> dict[str, Any]:
        payload = _json_object(request)
        if action == "expire":
            if payload:
                raise ConfigError("expected an empty body {}")
            intent = self.app.flow.expire(intent_id)
            self.app.stats.event("authorizations_expired")
            return intent
        if set(payload) != {"succeed"} or not isinstance(payload["succeed"], bool):
            raise ConfigError('expected {"succeed": true} or {"succeed": false}')
        succeed = payload["succeed"]
        if action == "3ds":
            return self.app.flow.authenticate(intent_id, succeed=succeed)
        return self.app.flow.settle(intent_id, succeed=succeed)

    def _reset(self, _request: Request) -> dict[str, Any]:
        self.app.reset()
        return {"ok": True}


def _json_object(request: Request) -> dict[str, Any]:
    try:
        payload = json.loads(request.body or b"{}")
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"body is not valid JSON: {exc}") from exc
    if not isinstance(payload, dict):
        raise ConfigError("body must be a JSON object")
    return payload


def _ok(data: dict[str, Any]) -> Response:
    return Response(200, json_body(data))


def _failure(status: int, message: str, param: str | None = None) -> Response:
    """An error in Stripe's shape, as the API's own errors are."""
    return Response(status, json_body(errors.invalid_request(message, param=param).body()))
