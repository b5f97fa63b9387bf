"""The stand-in's request handling without HTTP: ordering of auth, faults, idempotency, script."""

import json
from typing import Any

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.errors import StripeError
from stripe_standin.faults import Fault, FaultSettings, ScriptedFault

KEY = "sk_test_unit123456"
BODY = b"amount=1234&currency=usd&metadata[payment_id]=42"


class Clockwork:
    """Fake sleep that records delays and can run a callback while "sleeping"."""

    def __init__(self) -> None:
        self.delays: list[float] = []
        self.during: Any = None

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.during is not None:
            callback, self.during = self.during, None
            callback()


def make_app(**faults: Any) -> tuple[StandinApp, Clockwork]:
    sleeper = Clockwork()
    config = StandinConfig(faults=FaultSettings(**faults), seed=1)
    return StandinApp(config, sleep=sleeper, clock=lambda: 1_700_000_000), sleeper


def create(
    app: StandinApp, body: bytes = BODY, key: str | None = "idem-1", api_key: str = KEY
) -> Response | Hangup:
    headers = {"authorization": f"Bearer {api_key}"}
    if key is not None:
        headers["idempotency-key"] = key
    return app.handle_api(Request("POST", "/v1/payment_intents", headers=headers, body=body))


def ok(reply: Response | Hangup) -> dict[str, Any]:
    assert isinstance(reply, Response), reply
    assert reply.status == 200, reply.body
    data: dict[str, Any] = json.loads(reply.body)
    return data


def error_of(reply: Response | Hangup) -> tuple[int, dict[str, Any]]:
    assert isinstance(reply, Response), reply
    return reply.status, json.loads(reply.body)["error"]


def test_create_returns_a_stripe_shaped_intent_with_request_id() -> None:
    app, _ = make_app()
    reply = create(app)
    intent = ok(reply)
    assert isinstance(reply, Response)
    assert reply.headers["Request-Id"].startswith("req_")
    assert reply.headers["Idempotency-Key"] == "idem-1"
    assert intent["id"].startswith("pi_")
    assert len(intent["id"]) == 3 + 24
    assert intent["client_secret"].startswith(intent["id"] + "_secret_")
    assert intent["created"] == 1_700_000_000
    assert intent["metadata"] == {"payment_id": "42"}
    assert (intent["status"], intent["amount_received"], intent["livemode"]) == (
        "requires_payment_method",
        0,
        False,
    )
    assert intent["payment_method_types"] == ["card"]
    assert intent["customer"] is None


def test_replay_returns_the_identical_body_and_marks_it() -> None:
    app, _ = make_app()
    first = create(app)
    second = create(app)
    assert isinstance(first, Response) and isinstance(second, Response)
    assert second.body == first.body
    assert second.headers["Idempotent-Replayed"] == "true"
    assert second.headers["Original-Request"] == first.headers["Request-Id"]
    assert second.headers["Request-Id"] != first.headers["Request-Id"]
    assert len(app.intents) == 1


def test_drop_happens_before_authentication_and_creates_nothing() -> None:
    app, _ = make_app(drop=1.0)
    assert isinstance(create(app, api_key="bad"), Hangup)
    assert isinstance(create(app), Hangup)
    stats = app.stats.snapshot()
    assert stats["faults"]["drop"] == 2
    assert stats["authentication_failures"] == 0
    assert stats["responses"] == {"no_response": 2}
    assert len(app.intents) == 0
    assert len(app.idempotency) == 0


@pytest.mark.parametrize(
    ("fault", "status", "settings"),
    [("fail_5xx", 500, {"save_5xx": False}), ("fail_429", 429, {})],
)
def test_injected_errors_are_not_stored_so_the_retry_creates(
    fault: str, status: int, settings: dict[str, Any]
) -> None:
    app, _ = make_app(**{fault: 1.0}, **settings)
    code, error = error_of(create(app))
    assert code == status
    assert error["type"] == ("api_error" if status == 500 else "invalid_request_error")
    assert len(app.intents) == 0
    app.faults.update({fault: 0.0})
    intent = ok(create(app))
    assert [e.intent["id"] for e in app.intents.all()] == [intent["id"]]


def test_lose_response_creates_and_stores_so_the_retry_replays() -> None:
    app, _ = make_app(lose_response=1.0)
    lost = create(app)
    assert isinstance(lost, Hangup)
    assert len(app.intents) == 1
    app.faults.update({"lose_response": 0.0})
    replay = create(app)
    assert ok(replay)["id"] == app.intents.all()[0].intent["id"]
    assert isinstance(replay, Response)
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert app.stats.snapshot()["faults"]["lose_response"] == 1


def test_latency_is_spent_while_the_key_is_held_and_a_duplicate_gets_409() -> None:
    app, sleeper = make_app(latency_ms=250)
    seen: dict[str, Any] = {}

    def duplicate_arrives() -> None:
        seen["in_flight"] = app.idempotency.in_flight()
        seen["reply"] = create(app)

    sleeper.during = duplicate_arrives
    ok(create(app))
    assert seen["in_flight"] == 1
    status, error = error_of(seen["reply"])
    assert status == 409
    assert (error["type"], error["code"]) == ("idempotency_error", "idempotency_key_in_use")
    assert sleeper.delays == [0.25, 0.25]
    assert app.stats.snapshot()["idempotency_conflicts"] == 1


def test_mismatched_parameters_are_an_idempotency_error() -> None:
    app, _ = make_app()
    ok(create(app))
    status, error = error_of(create(app, body=b"amount=999&currency=usd"))
    assert status == 400
    assert error["type"] == "idempotency_error"
    assert "'idem-1'" in error["message"]


def test_validation_errors_are_not_stored_against_the_key() -> None:
    app, _ = make_app()
    status, error = error_of(create(app, body=b"amount=10&currency=usd"))
    assert (status, error["code"]) == (400, "amount_too_small")
    ok(create(app, body=b"amount=1000&currency=usd"))  # same key, now valid: runs afresh


def test_script_answers_in_order_and_is_not_stored() -> None:
    app, _ = make_app()
    card = StripeError(402, "card_error", "Your card was declined.", code="card_declined")
    app.script.load([card, ScriptedFault(Fault.DROP), ScriptedFault(Fault.LOSE_RESPONSE)])
    status, error = error_of(create(app))
    assert (status, error["type"], error["code"]) == (402, "card_error", "card_declined")
    assert isinstance(create(app), Hangup)
    assert isinstance(create(app), Hangup)
    assert len(app.intents) == 1  # created by the scripted lose_response
    assert ok(create(app))["id"] == app.intents.all()[0].intent["id"]
    assert app.stats.snapshot()["faults"]["scripted"] == 3


def test_replays_do_not_consume_the_script() -> None:
    app, _ = make_app()
    ok(create(app))
    app.script.load([StripeError(500, "api_error", "boom")])
    ok(create(app))
    assert app.script.pending() == 1


@pytest.mark.parametrize(
    ("authorization", "message"),
    [
        (None, "You did not provide an API key."),
        ("Bearer pk_test_abcdefgh", "Invalid API Key provided: pk_test_****efgh"),
        ("Bearer sk_test_", "Invalid API Key provided: sk_test_"),
        ("Basic c2tfdGVzdF94eXo6", None),  # curl -u sk_test_xyz:
    ],
)
def test_api_key_check(authorization: str | None, message: str | None) -> None:
    app, _ = make_app()
    headers = {} if authorization is None else {"authorization": authorization}
    reply = app.handle_api(Request("GET", "/v1/payment_intents/pi_x", headers=headers))
    assert isinstance(reply, Response)
    if message is None:
        assert reply.status == 404  # authenticated, the intent just does not exist
    else:
        assert reply.status == 401
        assert json.loads(reply.body)["error"]["message"].startswith(message)


def test_configured_api_key_must_match_exactly() -> None:
    sleeper = Clockwork()
    app = StandinApp(StandinConfig(api_key="sk_test_exact", seed=1), sleep=sleeper)
    assert error_of(create(app, api_key="sk_test_other"))[0] == 401
    ok(create(app, api_key="sk_test_exact"))


def test_idempotency_keys_are_scoped_per_api_key() -> None:
    app, _ = make_app()
    first = ok(create(app, api_key="sk_test_aaaa"))
    second = ok(create(app, api_key="sk_test_bbbb"))
    assert first["id"] != second["id"]


def test_retrieve_and_unknown_routes() -> None:
    app, _ = make_app()
    intent = ok(create(app))
    auth = {"authorization": f"Bearer {KEY}"}
    assert (
        ok(app.handle_api(Request("GET", f"/v1/payment_intents/{intent['id']}", headers=auth)))
        == intent
    )
    status, error = error_of(
        app.handle_api(Request("GET", "/v1/payment_intents/pi_no", headers=auth))
    )
    assert (status, error["code"], error["param"]) == (404, "resource_missing", "intent")
    status, error = error_of(app.handle_api(Request("GET", "/v1/charges", headers=auth)))
    assert status == 404
    assert error["message"].startswith("Unrecognized request URL (GET: /v1/charges).")
    by_route = app.stats.snapshot()["requests"]["by_route"]
    assert by_route == {
        "POST /v1/payment_intents": 1,
        "GET /v1/payment_intents/:id": 2,
        "GET /v1/payment_intents/search": 0,
        "POST /v1/payment_intents/:id/confirm": 0,
        "POST /v1/payment_intents/:id/cancel": 0,
        "POST /v1/payment_intents/:id/capture": 0,
        "POST /v1/refunds": 0,
        "GET /v1/refunds": 0,
        "GET /v1/refunds/:id": 0,
        "GET /v1/events": 0,
        "GET /v1/events/:id": 0,
        "GET /v1/charges/:id": 0,
        "other": 1,
    }


def test_admin_config_script_and_reset() -> None:
    app, _ = make_app()
    admin = Admin(app)

    def call(method: str, name: str, payload: Any = None) -> tuple[int, Any]:
        body = b"" if payload is None else json.dumps(payload).encode()
        reply = admin.handle(Request(method, f"/_standin/{name}", body=body))
        return reply.status, json.loads(reply.body)

    assert call("POST", "config", {"latency_ms": 5, "drop": 0.5}) == (
        200,
        {
            "latency_ms": 5,
            "drop": 0.5,
            "fail_5xx": 0.0,
            "fail_429": 0.0,
            "lose_response": 0.0,
            "create_then_5xx": 0.0,
            "save_5xx": True,
            "search_lag_ms": 0,
            "seed": 1,
        },
    )
    status, body = call("POST", "config", {"drop": 0.7, "fail_5xx": 0.7})
    assert status == 400
    assert "at most 1" in body["error"]["message"]
    assert call("POST", "script", {"responses": [{"fault": "drop"}]}) == (200, {"pending": 1})
    assert call("POST", "script", {"responses": [{"fault": "nope"}]})[0] == 400
    assert call("GET", "script") == (200, {"pending": 1})
    assert call("GET", "nothing")[0] == 404
    assert call("GET", "reset")[0] == 405
    app.faults.update({"drop": 0.0})
    assert isinstance(create(app), Hangup)  # the scripted drop
    ok(create(app))
    assert call("POST", "reset") == (200, {"ok": True})
    assert call("GET", "config")[1]["latency_ms"] == 0
    assert call("GET", "stats")[1]["requests"]["total"] == 0
    assert call("GET", "payment_intents")[1] == {"object": "list", "count": 0, "data": []}
    assert call("GET", "script") == (200, {"pending": 0})
