"""Stripe's idempotency rules in the stand-in: a 5xx that began executing is saved and
replayed, what never executed is not, keys age out, and search finds what a 500 hid."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.faults import FaultSettings, parse_script_entry
from stripe_standin.store import IdempotencyStore, StoredResponse

KEY = "sk_test_unit123456"
BODY = b"amount=1234&currency=usd&metadata[payment_id]=42"
AUTH = {"authorization": f"Bearer {KEY}"}


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


def make_app(**faults: Any) -> tuple[StandinApp, Clock]:
    clock = Clock()
    app = StandinApp(
        StandinConfig(faults=FaultSettings(**faults), seed=1), sleep=lambda _s: None, clock=clock
    )
    return app, clock


def create(app: StandinApp, body: bytes = BODY, key: str | None = "idem-1") -> Response | Hangup:
    headers = dict(AUTH)
    if key is not None:
        headers["idempotency-key"] = key
    return app.handle_api(Request("POST", "/v1/payment_intents", headers=headers, body=body))


def search(app: StandinApp, query: str, **params: str) -> Response:
    reply = app.handle_api(
        Request(
            "GET",
            "/v1/payment_intents/search",
            query=urlencode({"query": query, **params}),
            headers=AUTH,
        )
    )
    assert isinstance(reply, Response)
    return reply


def body_of(reply: Response | Hangup) -> dict[str, Any]:
    assert isinstance(reply, Response), reply
    data: dict[str, Any] = json.loads(reply.body)
    return data


def admin_call(app: StandinApp, method: str, name: str, payload: Any = None) -> tuple[int, Any]:
    body = b"" if payload is None else json.dumps(payload).encode()
    path, _, query = name.partition("?")
    reply = Admin(app).handle(Request(method, f"/_standin/{path}", query=query, body=body))
    return reply.status, json.loads(reply.body)


def test_a_5xx_that_began_executing_is_saved_and_replayed_after_the_fault_stops() -> None:
    app, _ = make_app(fail_5xx=1.0)
    first = create(app)
    assert isinstance(first, Response) and first.status == 500
    app.faults.update({"fail_5xx": 0.0})
    again = create(app)
    assert isinstance(again, Response)
    assert (again.status, again.body) == (500, first.body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Original-Request"] == first.headers["Request-Id"]
    assert len(app.intents) == 0
    stats = app.stats.snapshot()
    assert (stats["server_errors_saved"], stats["idempotent_replays"]) == (1, 1)
    # Another key is a new request: it creates.
    assert body_of(create(app, key="idem-2"))["id"].startswith("pi_")


def test_with_save_5xx_off_the_key_is_released_and_the_retry_creates() -> None:
    app, _ = make_app(fail_5xx=1.0, save_5xx=False)
    assert body_of(create(app))["error"]["type"] == "api_error"
    app.faults.update({"fail_5xx": 0.0})
    assert body_of(create(app))["object"] == "payment_intent"
    assert app.stats.snapshot()["server_errors_saved"] == 0


def test_a_5xx_before_executing_saves_nothing() -> None:
    """Invalid parameters, a key already answered, no key: none of these executed."""
    app, _ = make_app(fail_5xx=1.0)
    invalid = create(app, body=b"amount=1&currency=usd")
    assert isinstance(invalid, Response) and invalid.status == 400
    assert app.idempotency.held() == []
    app.faults.update({"fail_5xx": 0.0})
    made = body_of(create(app))
    app.faults.update({"fail_5xx": 1.0})
    edge = create(app)
    assert isinstance(edge, Response) and edge.status == 500
    assert "Idempotent-Replayed" not in edge.headers
    app.faults.update({"fail_5xx": 0.0})
    assert body_of(create(app)) == made  # the saved 200 is still what replays
    app.faults.update({"fail_5xx": 1.0})
    assert isinstance(unkeyed := create(app, key=None), Response) and unkeyed.status == 500
    assert len(app.idempotency) == 1


def test_create_then_5xx_stores_the_intent_saves_the_500_and_search_finds_it() -> None:
    app, _ = make_app(create_then_5xx=1.0)
    first = create(app)
    assert isinstance(first, Response) and first.status == 500
    app.faults.update({"create_then_5xx": 0.0})
    replay = create(app)
    assert isinstance(replay, Response) and replay.status == 500
    assert replay.headers["Idempotent-Replayed"] == "true"
    [stored] = app.intents.all()
    found = body_of(search(app, "metadata['payment_id']:'42'"))
    assert found["object"] == "search_result"
    assert [i["id"] for i in found["data"]] == [stored.intent["id"]]
    assert found["data"][0]["client_secret"] == stored.intent["client_secret"]
    assert body_of(search(app, 'metadata["payment_id"]:"43"'))["data"] == []


def test_scripted_5xx_is_saved_a_scripted_decline_is_not() -> None:
    app, _ = make_app()
    app.script.load(
        [
            parse_script_entry({"status": 503, "error": {"type": "api_error", "message": "x"}}),
            parse_script_entry({"fault": "create_then_5xx"}),
        ]
    )
    assert isinstance(r := create(app, key="a"), Response) and r.status == 503
    assert isinstance(r := create(app, key="a"), Response) and r.status == 503
    assert r.headers["Idempotent-Replayed"] == "true"
    assert isinstance(r := create(app, key="b"), Response) and r.status == 500
    assert len(app.intents) == 1
    app.script.load(
        [parse_script_entry({"status": 402, "error": {"type": "card_error", "message": "no"}})]
    )
    assert isinstance(r := create(app, key="c"), Response) and r.status == 402
    assert body_of(create(app, key="c"))["object"] == "payment_intent"


def test_keys_age_out_after_the_ttl_counted_from_their_first_use() -> None:
    now = [0.0]
    store = IdempotencyStore(ttl_seconds=100, clock=lambda: now[0])
    assert store.begin("s", "k", "fp").decision.value == "new"
    now[0] = 60.0
    store.complete("s", "k", StoredResponse(200, b"{}", "req_1"))
    now[0] = 99.0
    assert store.begin("s", "k", "fp").decision.value == "replay"
    assert store.begin("s", "k", "other").decision.value == "mismatch"
    now[0] = 100.0  # 100 s after first use, though saved only 40 s ago
    assert store.begin("s", "k", "fp").decision.value == "new"


def test_expire_forgets_one_key_or_the_old_ones_never_one_in_flight() -> None:
    now = [0.0]
    store = IdempotencyStore(clock=lambda: now[0])
    for key in ("old", "young", "busy"):
        store.begin("s", key, "fp")
        if key != "busy":
            store.complete("s", key, StoredResponse(200, b"{}", "req"))
        now[0] += 3600
    assert store.expire(older_than_seconds=2.5 * 3600) == 1  # "old" only; "busy" is in flight
    assert [k.key for k in store.held()] == ["young", "busy"]
    assert store.expire(key="young") == 1
    assert store.expire(key="busy") == 0
    assert [(k.key, k.status) for k in store.held()] == [("busy", None)]
    with pytest.raises(ValueError, match="exactly one"):
        store.expire()


def test_admin_expire_then_the_same_key_creates_a_second_intent() -> None:
    app, _ = make_app()
    first = body_of(create(app))
    status, keys = admin_call(app, "GET", "idempotency")
    assert status == 200 and [(k["key"], k["status"]) for k in keys["data"]] == [("idem-1", 200)]
    assert admin_call(app, "POST", "idempotency/expire", {"key": "idem-1"}) == (
        200,
        {"expired": 1},
    )
    second = body_of(create(app))
    assert second["id"] != first["id"] and len(app.intents) == 2
    assert admin_call(app, "POST", "idempotency/expire", {"older_than_seconds": 0}) == (
        200,
        {"expired": 1},
    )


@pytest.mark.parametrize(
    "payload",
    [
        {},
        {"key": "a", "older_than_seconds": 1},
        {"key": 3},
        {"older_than_seconds": -1},
        {"older_than_seconds": True},
        {"nope": 1},
    ],
)
def test_admin_expire_refuses_bad_input_and_changes_nothing(payload: dict[str, Any]) -> None:
    app, _ = make_app()
    create(app)
    status, body = admin_call(app, "POST", "idempotency/expire", payload)
    assert status == 400 and body["error"]["type"] == "invalid_request_error"
    assert len(app.idempotency) == 1


def test_search_refuses_other_queries_and_bad_limits() -> None:
    app, _ = make_app()
    for query in ("", "amount>100", "metadata['a']:'b' AND status:'x'"):
        reply = search(app, query)
        assert reply.status == 400, query
        assert body_of(reply)["error"]["param"] == "query"
    bad = search(app, "metadata['a']:'b'", limit="0")
    assert bad.status == 400 and body_of(bad)["error"]["param"] == "limit"


def test_search_is_eventually_consistent_by_search_lag_ms() -> None:
    app, clock = make_app(search_lag_ms=2000)
    made = body_of(create(app))
    assert body_of(search(app, "metadata['payment_id']:'42'"))["data"] == []
    clock.now += 2.0
    assert [i["id"] for i in body_of(search(app, "metadata['payment_id']:'42'"))["data"]] == [
        made["id"]
    ]


def test_request_log_has_each_create_and_search_with_its_interval_and_outcome() -> None:
    app, _ = make_app()
    create(app)
    create(app)
    search(app, "metadata['payment_id']:'42'")
    app.faults.update({"lose_response": 1.0})
    create(app)  # a replay whose answer is lost: it made nothing
    create(app, key="idem-3")  # made the intent, answer lost
    app.faults.update({"lose_response": 0.0, "drop": 1.0})
    create(app, key="idem-2")
    status, log = admin_call(app, "GET", "requests?payment_id=42")
    assert status == 200
    rows = [(e["route"], e["idempotency_key"], e["outcome"], e["status"]) for e in log["data"]]
    assert rows == [
        ("POST /v1/payment_intents", "idem-1", "created", 200),
        ("POST /v1/payment_intents", "idem-1", "replay", 200),
        ("GET /v1/payment_intents/search", None, "ok", 200),
        ("POST /v1/payment_intents", "idem-1", "unanswered", None),
        ("POST /v1/payment_intents", "idem-3", "lost", None),
        ("POST /v1/payment_intents", "idem-2", "dropped", None),
    ]
    assert all(e["started"] <= e["ended"] for e in log["data"])
    assert admin_call(app, "GET", "requests?payment_id=43")[1]["count"] == 0
    admin_call(app, "POST", "reset")
    assert admin_call(app, "GET", "requests")[1]["count"] == 0
