"""The Stripe API emulation, independent of HTTP plumbing: a request in, a reply (or hang-up) out.

Order of work for one API request:

1. count it, expire the authorisations past ``capture_before``, draw a fault; ``drop``
   hangs up before anything else;
2. authenticate (401 like Stripe);
3. injected ``fail_429`` answers an error (nothing stored), as does ``fail_5xx`` on anything
   but a create that claims a new idempotency key;
4. route: create (idempotency claim, latency while the key is held, script, validation,
   then an injected 5xx or the creation, the result saved against the key); confirm,
   cancel, capture and refund creation the same way without the script (a card decline
   is a result: its 402 is saved;
   ``create_then_5xx`` does the move, then answers 500); search, retrieve, events,
   charges and refunds (latency, lookup);
5. ``lose_response``: the work is done and saved, then the connection is closed unanswered.

Every PaymentIntent answer (create, retrieve, confirm, capture, cancel, search) honours
``expand[]=latest_charge`` (:mod:`stripe_standin.expand`), its paths checked with the other
parameters, before anything is done.

Like Stripe, a create saves its result once it began executing (after its key was claimed
and its parameters validated), a 500 included unless ``save_5xx`` is off; a request that
failed validation, conflicted with one in flight or was cut before executing saves nothing.
Every create and search is logged with its start, end and outcome (``/_standin/requests``).
"""

from __future__ import annotations

import base64
import binascii
import functools
import hmac
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from stripe_standin import errors, stats
from stripe_standin.config import StandinConfig
from stripe_standin.errors import StripeError
from stripe_standin.events import EventStore, Origin
from stripe_standin.expand import expand_intent, intent_paths
from stripe_standin.faults import Fault, FaultInjector, Script
from stripe_standin.flow import Flow
from stripe_standin.intents import build_payment_intent, new_request_id
from stripe_standin.params import decode_form, fingerprint, parse_pairs
from stripe_standin.refunds import Refunds
from stripe_standin.requestlog import RequestLog
from stripe_standin.search import SearchQueryError, parse_metadata_query
from stripe_standin.stats import Stats
from stripe_standin.store import Decision, IdempotencyStore, IntentStore, StoredResponse
from stripe_standin.validation import validate_create
from stripe_standin.webhooks import WebhookDeliverer

MAX_IDEMPOTENCY_KEY_LENGTH = 255
MAX_SEARCH_LIMIT = 100
RETRIEVE_PARAMS = frozenset({"client_secret", "expand"})
_RETRIEVE_PATH = re.compile(r"^/v1/payment_intents/([^/]+)$")
_ACTION_PATH = re.compile(r"^/v1/payment_intents/([^/]+)/(confirm|cancel|capture)$")
_EVENT_PATH = re.compile(r"^/v1/events/([^/]+)$")
_CHARGE_PATH = re.compile(r"^/v1/charges/([^/]+)$")
_REFUND_PATH = re.compile(r"^/v1/refunds/([^/]+)$")
_FIXED_ROUTES = {
    ("POST", "/v1/payment_intents"): stats.CREATE,
    ("POST", "/v1/refunds"): stats.REFUND_CREATE,
    ("GET", "/v1/refunds"): stats.REFUND_LIST,
    ("GET", "/v1/payment_intents/search"): stats.SEARCH,
    ("GET", "/v1/events"): stats.EVENTS,
}
_ACTIONS = {"confirm": stats.CONFIRM, "cancel": stats.CANCEL, "capture": stats.CAPTURE}
_VERBS = {
    stats.CONFIRM: "confirmed",
    stats.CANCEL: "canceled",
    stats.CAPTURE: "captured",
    stats.REFUND_CREATE: "refunded",
}
#: Routes whose POST executes once its idempotency key is claimed (results saved).
_IDEMPOTENT = (stats.CREATE, stats.CONFIRM, stats.CANCEL, stats.CAPTURE, stats.REFUND_CREATE)
_SERVER_ERRORS = (Fault.FAIL_5XX, Fault.CREATE_THEN_5XX)


@dataclass(frozen=True)
class Request:
    """One HTTP request as the app sees it; header names are lower-case."""

    method: str
    path: str
    query: str = ""
    headers: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""


@dataclass(frozen=True)
class Response:
    """An answer to send; ``note`` only goes to the log line."""

    status: int
    body: bytes
    headers: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass(frozen=True)
class Hangup:
    """Close the connection without answering (a dropped or lost response)."""

    note: str


Reply = Response | Hangup


@dataclass(frozen=True)
class _Saving:
    """Where a create's result is saved: its idempotency key (if any) in its API key's scope."""

    key: str | None
    scope: str
    request_id: str
    headers: dict[str, str]


def json_body(data: Any) -> bytes:
    """Pretty-printed JSON, as Stripe sends it."""
    return (json.dumps(data, indent=2, ensure_ascii=False) + "\n").encode()


def classify(method: str, path: str) -> tuple[str, str | None]:
    """Route kind for stats and dispatch, plus the object id the path names."""
    fixed = _FIXED_ROUTES.get((method, path))
    if fixed is not None:
        return fixed, None
    match = _RETRIEVE_PATH.match(path)
    if match and method == "GET":
        return stats.RETRIEVE, match.group(1)
    match = _ACTION_PATH.match(path)
    if match and method == "POST":
        return _ACTIONS[match.group(2)], match.group(1)
    for pattern, route in (
        (_EVENT_PATH, stats.EVENT),
        (_CHARGE_PATH, stats.CHARGE),
        (_REFUND_PATH, stats.REFUND),
    ):
        match = pattern.match(path)
        if match and method == "GET":
            return route, match.group(1)
    return stats.OTHER, None


def api_key_from(headers: Mapping[str, str]) -> str | None:
    """The API key from ``Authorization: Bearer`` (or Basic, as curl -u sends it)."""
    value = headers.get("authorization", "").strip()
    scheme, _, credentials = value.partition(" ")
    credentials = credentials.strip()
    if scheme.lower() == "bearer":
        return credentials or None
    if scheme.lower() == "basic":
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            return credentials or None
        return decoded.partition(":")[0] or None
    return None


class StandinApp:
    """State and behaviour of one stand-in instance."""

    def __init__(
        self,
        config: StandinConfig,
        *,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.faults = FaultInjector(config.faults, config.seed)
        self.script = Script()
        self.intents = IntentStore()
        self.idempotency = IdempotencyStore()
        self.stats = Stats()
        self.requests = RequestLog()
        self._sleep = sleep
        self._clock = clock
        self.events = EventStore()
        self.flow = Flow(
            self.intents,
            self.events,
            clock,
            authorization_window=config.authorization_window,
        )
        self.refunds = Refunds(self.flow, self.events, clock, pending=config.refunds_pending)
        self.webhooks = WebhookDeliverer(
            config.webhooks,
            config.webhook_secret,
            seed=config.seed,
            on_delivered=self.events.delivered,
        )
        self.events.listen(self.webhooks.offer)

    def reset(self) -> None:
        """Forget intents, keys, counters and script; restore start-up fault settings and seed."""
        self.script.clear()
        self.intents.clear()
        self.idempotency.clear()
        self.stats.clear()
        self.requests.clear()
        self.faults.reset(self.config.faults, self.config.seed)
        self.events.clear()
        self.flow.clear()
        self.flow.authorization_window = self.config.authorization_window
        self.refunds.clear()
        self.refunds.pending = self.config.refunds_pending
        self.webhooks.reset(self.config.webhooks, self.config.webhook_secret, self.config.seed)

    def expire_authorizations(self) -> int:
        """Cancel the authorisations whose ``capture_before`` passed; how many."""
        expired = self.flow.expire_due()
        for _ in expired:
            self.stats.event("authorizations_expired")
        return len(expired)

    # --- API entry point --------------------------------------------------------------------

    def handle_api(self, request: Request) -> Reply:
        """Answer one ``/v1/...`` request (counted by route and by outcome)."""
        started = self._clock()
        reply = self._handle_api(request)
        self.stats.response(reply.status if isinstance(reply, Response) else None)
        route, _ = classify(request.method, request.path)
        if route in (stats.CREATE, stats.SEARCH):
            self.requests.record(
                route=route,
                idempotency_key=request.headers.get("idempotency-key"),
                payment_id=_payment_id_of(route, request),
                started=started,
                ended=self._clock(),
                outcome=outcome_of(reply),
                status=reply.status if isinstance(reply, Response) else None,
            )
        return reply

    def _handle_api(self, request: Request) -> Reply:
        route, intent_id = classify(request.method, request.path)
        self.stats.request(route)
        self.expire_authorizations()  # lazily, besides the sweeper: no stale requires_capture
        fault = self.faults.decide()
        if fault is Fault.DROP:
            self.stats.fault(Fault.DROP.value)
            return Hangup("fault=drop")

        request_id = new_request_id()
        base_headers = self._base_headers(request, request_id)
        latency = self.faults.settings.latency_ms / 1000.0

        api_key = api_key_from(request.headers)
        auth_error = self._check_key(api_key)
        if auth_error is not None:
            self.stats.event("authentication_failures")
            self._sleep(latency)
            return self._error(auth_error, request_id, base_headers)
        assert api_key is not None

        # A create, confirm or cancel with a new key decides itself whether its 5xx began
        # executing (saved).
        executes = route in _IDEMPOTENT and "idempotency-key" in request.headers
        if fault is Fault.FAIL_429 or (fault in _SERVER_ERRORS and not executes):
            assert fault is not None
            self.stats.fault(fault.value)
            self._sleep(latency)
            injected = errors.rate_limited() if fault is Fault.FAIL_429 else errors.api_error()
            return self._error(injected, request_id, base_headers, note=f"fault={fault.value}")

        reply: Reply
        if route in _IDEMPOTENT:
            execute = self._execute_create
            if route != stats.CREATE:
                execute = functools.partial(
                    self._execute_action, route, intent_id, _base_url(request)
                )
            reply = self._idempotent(
                request,
                api_key,
                request_id,
                base_headers,
                latency=latency,
                execute=execute,
                fault=fault,
            )
        else:
            self._sleep(latency)
            reply = self._read(route, intent_id, request, request_id, base_headers)

        if fault is Fault.LOSE_RESPONSE and isinstance(reply, Response):
            self.stats.fault(Fault.LOSE_RESPONSE.value)
            return Hangup(f"fault=lose_response (would have answered {reply.status}: {reply.note})")
        return reply

    # --- endpoints ---------------------------------------------------------------------------

    def _read(
        self,
        route: str,
        object_id: str | None,
        request: Request,
        request_id: str,
        headers: dict[str, str],
    ) -> Response:
        """The GET endpoints (and the 404 for anything unknown)."""
        if route == stats.SEARCH:
            return self._search(request.query, request_id, headers)
        if route == stats.EVENTS:
            return self._list_events(request.query, request_id, headers)
        if route == stats.REFUND_LIST:
            return self._list_refunds(request.query, request_id, headers)
        if route == stats.RETRIEVE and object_id is not None:
            return self._retrieve(object_id, request.query, request_id, headers)
        retrieve = {
            stats.EVENT: self._retrieve_event,
            stats.CHARGE: self._retrieve_charge,
            stats.REFUND: self._retrieve_refund,
        }.get(route)
        if object_id is not None and retrieve is not None:
            return retrieve(object_id, request_id, headers)
        error = errors.unrecognized_url(request.method, request.path)
        return self._error(error, request_id, headers)

    def _idempotent(
        self,
        request: Request,
        api_key: str,
        request_id: str,
        headers: dict[str, str],
        *,
        latency: float,
        execute: Callable[..., Reply],
        fault: Fault | None = None,
    ) -> Reply:
        """A POST that executes once per idempotency key: claim the key (or answer its saved
        result, a mismatch or a conflict), then ``execute`` and release an unsaved claim."""
        try:
            body = request.body.decode("utf-8")
        except UnicodeDecodeError:
            self._sleep(latency)
            error = errors.invalid_request("Invalid request body: it is not valid UTF-8.")
            return self._error(error, request_id, headers)

        key = request.headers.get("idempotency-key")
        scope = IdempotencyStore.scope_for(api_key)
        if key is not None:
            headers["Idempotency-Key"] = key
            if len(key) > MAX_IDEMPOTENCY_KEY_LENGTH:
                self._sleep(latency)
                return self._error(errors.idempotency_key_too_long(), request_id, headers)
            claim = self.idempotency.begin(
                scope, key, fingerprint(request.method, request.path, body)
            )
            if claim.decision is not Decision.NEW:
                self._sleep(latency)
                if fault in _SERVER_ERRORS:  # a 500 before executing: nothing saved
                    assert fault is not None
                    self.stats.fault(fault.value)
                    note = f"fault={fault.value}"
                    return self._error(errors.api_error(), request_id, headers, note=note)
                return self._idempotency_answer(
                    claim.decision, claim.response, key, request_id, headers
                )

        try:
            return execute(
                body,
                key=key,
                scope=scope,
                request_id=request_id,
                headers=headers,
                latency=latency,
                fault=fault,
            )
        finally:
            if key is not None:
                self.idempotency.release(scope, key)  # no-op once a result was saved

    def _execute_create(
        self,
        body: str,
        *,
        key: str | None,
        scope: str,
        request_id: str,
        headers: dict[str, str],
        latency: float,
        fault: Fault | None = None,
    ) -> Reply:
        self._sleep(latency)  # while the key is held: concurrent duplicates get 409
        where = _Saving(key, scope, request_id, headers)
        scripted = self._scripted(where)
        if isinstance(scripted, Response | Hangup):
            return scripted
        lose = scripted is Fault.LOSE_RESPONSE
        then_5xx = Fault.CREATE_THEN_5XX in (scripted, fault)

        try:
            form = decode_form(body)
            params = validate_create(form)
            paths = intent_paths(form)
        except StripeError as error:
            return self._error(error, request_id, headers)
        if fault is Fault.FAIL_5XX:
            self.stats.fault(fault.value)
            return self._server_error(errors.api_error(), where, note="fault=fail_5xx")

        intent = build_payment_intent(params, now=int(self._clock()))
        self.intents.add(intent, key, request_id, at=self._clock())
        self.stats.event("payment_intents_created")
        origin = Origin(request_id, key)
        self.events.record("payment_intent.created", intent, origin, created=int(self._clock()))
        if then_5xx:
            if fault is Fault.CREATE_THEN_5XX:
                self.stats.fault(fault.value)
            note = f"created {intent['id']}, then 500"
            return self._server_error(errors.api_error(), where, note=note)
        answer = expand_intent(intent, paths, self.flow.charge)
        response = self._json(200, answer, headers, note=f"created {intent['id']}")
        if key is not None:
            stored = StoredResponse(response.status, response.body, request_id)
            self.idempotency.complete(scope, key, stored)
        if lose:
            return Hangup(f"scripted lose_response (created {intent['id']})")
        return response

    def _execute_action(
        self,
        route: str,
        intent_id: str | None,
        base_url: str,
        body: str,
        *,
        key: str | None,
        scope: str,
        request_id: str,
        headers: dict[str, str],
        latency: float,
        fault: Fault | None = None,
    ) -> Reply:
        """Confirm, cancel, capture or create a refund. Like a create, the result is saved
        against the key once the request began executing: a 200, a card decline (402, the
        intent changed) or a 5xx; a refused request (bad parameters, wrong state) saves
        nothing."""
        self._sleep(latency)  # while the key is held: concurrent duplicates get 409
        where = _Saving(key, scope, request_id, headers)
        try:
            form = decode_form(body)
            paths = intent_paths(form) if route != stats.REFUND_CREATE else ()
        except StripeError as error:
            return self._error(error, request_id, headers)
        if fault is Fault.FAIL_5XX:
            self.stats.fault(fault.value)
            return self._server_error(errors.api_error(), where, note="fault=fail_5xx")
        origin = Origin(request_id, key)
        verb = _VERBS[route]
        try:
            if route == stats.REFUND_CREATE:
                refund = self.refunds.create(form, origin)
                self.stats.event("refunds_created")
                note = f"refund {refund['id']}: {refund['status']}"
                return self._answer_action(refund, note, where, fault)
            assert intent_id is not None
            if route == stats.CONFIRM:
                intent = self.flow.confirm(intent_id, form, origin, base_url=base_url)
            elif route == stats.CAPTURE:
                intent = self.flow.capture(intent_id, form, origin)
            else:
                intent = self.flow.cancel(intent_id, form, origin)
        except StripeError as error:
            if error.status != 402:
                return self._error(error, request_id, headers)
            self.stats.event("payment_intents_confirmed")
            response = self._error(error, request_id, headers, note=f"declined {intent_id}")
            self._save(where, response)
            return response
        self.stats.event(f"payment_intents_{verb}")
        note = f"{verb} {intent_id}: {intent['status']}"
        answer = expand_intent(intent, paths, self.flow.charge)
        return self._answer_action(answer, note, where, fault)

    def _answer_action(
        self, result: dict[str, Any], note: str, where: _Saving, fault: Fault | None
    ) -> Response:
        """The 200 of an action that was done (or the 500 after it), saved against its key."""
        if fault is Fault.CREATE_THEN_5XX:
            self.stats.fault(fault.value)
            return self._server_error(errors.api_error(), where, note=f"{note}, then 500")
        response = self._json(200, result, where.headers, note=note)
        self._save(where, response)
        return response

    def _save(self, where: _Saving, response: Response) -> None:
        if where.key is not None:
            stored = StoredResponse(response.status, response.body, where.request_id)
            self.idempotency.complete(where.scope, where.key, stored)

    def _list_events(self, query: str, request_id: str, headers: dict[str, str]) -> Response:
        """``GET /v1/events``."""
        try:
            data = self.events.list(decode_form(query, frozenset({"created"})))
        except StripeError as error:
            return self._error(error, request_id, headers)
        return self._json(200, data, headers)

    def _retrieve_event(self, event_id: str, request_id: str, headers: dict[str, str]) -> Response:
        """``GET /v1/events/{id}``."""
        return self._found("event", event_id, self.events.get(event_id), request_id, headers)

    def _list_refunds(self, query: str, request_id: str, headers: dict[str, str]) -> Response:
        """``GET /v1/refunds``."""
        try:
            data = self.refunds.list(decode_form(query))
        except StripeError as error:
            return self._error(error, request_id, headers)
        return self._json(200, data, headers)

    def _retrieve_refund(
        self, refund_id: str, request_id: str, headers: dict[str, str]
    ) -> Response:
        """``GET /v1/refunds/{id}``."""
        return self._found("refund", refund_id, self.refunds.get(refund_id), request_id, headers)

    def _retrieve_charge(
        self, charge_id: str, request_id: str, headers: dict[str, str]
    ) -> Response:
        """``GET /v1/charges/{id}`` for the charges confirmations made."""
        return self._found("charge", charge_id, self.flow.charge(charge_id), request_id, headers)

    def _found(
        self,
        kind: str,
        object_id: str,
        found: dict[str, Any] | None,
        request_id: str,
        headers: dict[str, str],
    ) -> Response:
        """A retrieve's answer: the object, or Stripe's resource_missing for `kind`."""
        if found is None:
            return self._error(errors.resource_missing(kind, object_id, "id"), request_id, headers)
        return self._json(200, found, headers)

    def _idempotency_answer(
        self,
        decision: Decision,
        stored: StoredResponse | None,
        key: str,
        request_id: str,
        headers: dict[str, str],
    ) -> Response:
        if decision is Decision.REPLAY:
            assert stored is not None
            self.stats.event("idempotent_replays")
            headers.update({"Idempotent-Replayed": "true", "Original-Request": stored.request_id})
            return Response(stored.status, stored.body, headers, note="replay")
        if decision is Decision.MISMATCH:
            self.stats.event("idempotency_mismatches")
            return self._error(errors.idempotency_mismatch(key), request_id, headers)
        self.stats.event("idempotency_conflicts")
        return self._error(errors.idempotency_in_flight(key), request_id, headers)

    def _scripted(self, where: _Saving) -> Reply | Fault | None:
        """The next scripted entry: a reply to send, or the fault to apply to the creation."""
        scripted = self.script.pop()
        if scripted is None:
            return None
        self.stats.fault("scripted")
        if isinstance(scripted, StripeError):
            if scripted.status >= 500:
                return self._server_error(scripted, where, note="scripted")
            return self._error(scripted, where.request_id, where.headers, note="scripted")
        if scripted.fault is Fault.DROP:
            return Hangup("scripted drop")
        return scripted.fault

    def _server_error(self, error: StripeError, where: _Saving, *, note: str) -> Response:
        """A 5xx of a create that began executing: saved against its key, as Stripe does."""
        response = self._error(error, where.request_id, where.headers, note=note)
        if where.key is not None and self.faults.settings.save_5xx:
            stored = StoredResponse(response.status, response.body, where.request_id)
            self.idempotency.complete(where.scope, where.key, stored)
            self.stats.event("server_errors_saved")
        return response

    def _search(self, query: str, request_id: str, headers: dict[str, str]) -> Response:
        """``GET /v1/payment_intents/search`` for ``metadata['k']:'v'`` queries only."""
        params = dict(parse_pairs(query))
        try:
            paths = intent_paths(decode_form(query), listed=True)
            key, value = parse_metadata_query(params.get("query"))
            limit = _search_limit(params.get("limit"))
        except StripeError as error:
            return self._error(error, request_id, headers)
        except SearchQueryError as exc:
            return self._error(
                errors.invalid_request(str(exc), param=exc.param), request_id, headers
            )
        lag = self.faults.settings.search_lag_ms / 1000.0
        found = self.intents.matching(key, value, visible_before=self._clock() - lag)
        self.stats.event("searches")
        data = {
            "object": "search_result",
            "data": [expand_intent(i, paths, self.flow.charge) for i in found[:limit]],
            "has_more": len(found) > limit,
            "next_page": None,
            "url": "/v1/payment_intents/search",
        }
        return self._json(200, data, headers)

    def _retrieve(
        self, intent_id: str, query: str, request_id: str, headers: dict[str, str]
    ) -> Response:
        """``GET /v1/payment_intents/{id}``; its parameters are checked before the lookup."""
        try:
            form = decode_form(query)
            for name in form:
                if name not in RETRIEVE_PARAMS:
                    raise errors.unknown_param(name)
            paths = intent_paths(form)
        except StripeError as error:
            return self._error(error, request_id, headers)
        intent = self.intents.get(intent_id)
        if intent is None:
            missing = errors.resource_missing("payment_intent", intent_id, "intent")
            return self._error(missing, request_id, headers)
        return self._json(200, expand_intent(intent, paths, self.flow.charge), headers)

    # --- helpers -----------------------------------------------------------------------------

    def _check_key(self, api_key: str | None) -> StripeError | None:
        if api_key is None:
            return errors.missing_api_key()
        if self.config.api_key is not None:
            if hmac.compare_digest(api_key.encode(), self.config.api_key.encode()):
                return None
        elif api_key.startswith("sk_test_") and len(api_key) > len("sk_test_"):
            return None
        return errors.invalid_api_key(api_key)

    @staticmethod
    def _base_headers(request: Request, request_id: str) -> dict[str, str]:
        headers = {"Request-Id": request_id, "Cache-Control": "no-cache, no-store"}
        version = request.headers.get("stripe-version")
        if version:
            headers["Stripe-Version"] = version
        return headers

    @staticmethod
    def _json(status: int, data: Any, headers: dict[str, str], note: str = "") -> Response:
        return Response(status, json_body(data), dict(headers), note=note)

    def _error(
        self, error: StripeError, request_id: str, headers: dict[str, str], note: str = ""
    ) -> Response:
        body = error.body(request_id, int(self._clock()))
        label = f"{error.error_type}/{error.code}" if error.code else error.error_type
        note = f"{note} {label}" if note else label
        return Response(error.status, json_body(body), {**headers, **error.headers}, note=note)


def _base_url(request: Request) -> str:
    """Where the client reached the stand-in, for links in ``next_action``."""
    host = request.headers.get("host", "")
    return f"http://{host}" if host else ""


def _payment_id_of(route: str, request: Request) -> str | None:
    """The payment a create (``metadata[payment_id]``) or a search (its query) is about."""
    if route == stats.SEARCH:
        try:
            key, value = parse_metadata_query(dict(parse_pairs(request.query)).get("query"))
        except SearchQueryError:
            return None
        return value if key == "payment_id" else None
    try:
        pairs = parse_pairs(request.body.decode("utf-8"))
    except (UnicodeDecodeError, StripeError):
        return None
    return next((v for k, v in pairs if k == "metadata[payment_id]"), None)


def _search_limit(raw: str | None) -> int:
    if raw is None or raw == "":
        return 10
    if not raw.isdigit() or not 1 <= int(raw) <= MAX_SEARCH_LIMIT:
        raise SearchQueryError(
            f"Invalid limit: must be an integer between 1 and {MAX_SEARCH_LIMIT}", param="limit"
        )
    return int(raw)


def outcome_of(reply: Reply) -> str:
    """One word for what a reply was, for the request log: ``created`` and ``lost`` made an
    intent (answered, even with a 500, or not), ``replay`` answered a saved result,
    ``unanswered`` lost an answer that made nothing (a replay, an error)."""
    if isinstance(reply, Hangup):
        if "created pi_" in reply.note:
            return "lost"
        return "unanswered" if "lose_response" in reply.note else "dropped"
    if reply.headers.get("Idempotent-Replayed") == "true":
        return "replay"
    if reply.note.startswith("created"):
        return "created"
    return "ok" if reply.status == 200 else "error"
