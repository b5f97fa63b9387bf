"""Capture and authorisation expiry of manual-capture PaymentIntents, without HTTP: Stripe's
amounts, errors and events, the lazy check, the sweeper's run_once, the control endpoints."""

import json
from typing import Any

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.expiry import ExpirySweeper
from stripe_standin.faults import FaultSettings

KEY = "sk_test_capture123456"
AUTH = {"authorization": f"Bearer {KEY}", "host": "127.0.0.1:12400"}
START = 1_700_000_000
WEEK = 7 * 24 * 60 * 60


class Clock:
    def __init__(self) -> None:
        self.now = float(START)

    def __call__(self) -> float:
        return self.now


def make_app(clock: Clock, window: float | None = None, **faults: Any) -> StandinApp:
    extra: dict[str, Any] = {} if window is None else {"authorization_window": window}
    config = StandinConfig(faults=FaultSettings(**faults), seed=1, **extra)
    return StandinApp(config, sleep=lambda _s: None, clock=clock)


def post(app: StandinApp, path: str, body: str = "", key: str | None = None) -> Response | Hangup:
    headers = dict(AUTH)
    if key is not None:
        headers["idempotency-key"] = key
    return app.handle_api(Request("POST", path, headers=headers, body=body.encode()))


def get(app: StandinApp, path: str) -> dict[str, Any]:
    return body_of(app.handle_api(Request("GET", path, headers=AUTH)))


def body_of(reply: Response | Hangup, status: int = 200) -> dict[str, Any]:
    assert isinstance(reply, Response), reply
    assert reply.status == status, reply.body
    data: dict[str, Any] = json.loads(reply.body)
    return data


def authorized(app: StandinApp, amount: int = 2500) -> dict[str, Any]:
    """A manual-capture intent confirmed with a succeeding card: requires_capture."""
    body = f"amount={amount}&currency=usd&capture_method=manual"
    intent = body_of(post(app, "/v1/payment_intents", body))
    confirm = f"/v1/payment_intents/{intent['id']}/confirm"
    return body_of(post(app, confirm, "payment_method=pm_card_visa"))


def capture(app: StandinApp, intent_id: str, body: str = "", key: str | None = None) -> Any:
    return post(app, f"/v1/payment_intents/{intent_id}/capture", body, key)


def types_after(app: StandinApp, intent: dict[str, Any]) -> list[str]:
    """Event types for this intent and its charge, after its authorisation."""
    ids = {intent["id"], intent["latest_charge"]}
    found = [e["type"] for e in app.events.all() if e["data"]["object"]["id"] in ids]
    return found[found.index("payment_intent.amount_capturable_updated") + 1 :]


def test_an_authorisation_is_capturable_until_capture_before() -> None:
    app = make_app(Clock())
    intent = authorized(app)
    assert intent["status"] == "requires_capture"
    assert (intent["amount_capturable"], intent["amount_received"]) == (2500, 0)
    charge = get(app, f"/v1/charges/{intent['latest_charge']}")
    assert charge["captured"] is False
    assert charge["amount_captured"] == 0
    assert charge["payment_method_details"]["card"]["capture_before"] == START + WEEK
    # The PaymentMethod's own card hash is not the charge's.
    assert "capture_before" not in app.flow._known(intent["payment_method"])[1]["card"]  # type: ignore[index]


def test_full_capture() -> None:
    app = make_app(Clock())
    intent = authorized(app)
    captured = body_of(capture(app, intent["id"]))
    assert captured["status"] == "succeeded"
    assert (captured["amount_received"], captured["amount_capturable"]) == (2500, 0)
    charge = get(app, f"/v1/charges/{intent['latest_charge']}")
    assert (charge["captured"], charge["amount_captured"], charge["amount_refunded"]) == (
        True,
        2500,
        0,
    )
    assert types_after(app, intent) == ["charge.captured", "payment_intent.succeeded"]


def test_partial_capture_releases_the_rest_without_a_refund() -> None:
    app = make_app(Clock())
    intent = authorized(app)
    captured = body_of(capture(app, intent["id"], "amount_to_capture=1000&metadata[k]=v"))
    assert (captured["status"], captured["amount_received"]) == ("succeeded", 1000)
    assert captured["amount_capturable"] == 0
    assert captured["metadata"] == {"k": "v"}
    charge = get(app, f"/v1/charges/{intent['latest_charge']}")
    assert charge["amount"] == 2500
    assert (charge["amount_captured"], charge["amount_refunded"]) == (1000, 0)
    assert (charge["captured"], charge["refunded"]) == (True, False)
    event = next(e for e in app.events.all() if e["type"] == "charge.captured")
    assert event["data"]["object"]["amount_captured"] == 1000


def test_capture_refusals_in_stripe_shape() -> None:
    app = make_app(Clock())
    intent = authorized(app)
    too_much = body_of(capture(app, intent["id"], "amount_to_capture=2501"), 400)["error"]
    assert too_much["type"] == "invalid_request_error"
    assert too_much["code"] == "amount_too_large"
    assert too_much["param"] == "amount_to_capture"
    unknown = body_of(capture(app, intent["id"], "amount=5"), 400)["error"]
    assert unknown["code"] == "parameter_unknown"
    assert get(app, f"/v1/payment_intents/{intent['id']}")["status"] == "requires_capture"
    body_of(capture(app, intent["id"]))
    again = body_of(capture(app, intent["id"]), 400)["error"]
    assert again["code"] == "payment_intent_unexpected_state"
    assert "status of succeeded" in again["message"]
    assert again["payment_intent"]["status"] == "succeeded"
    fresh = body_of(post(app, "/v1/payment_intents", "amount=900&currency=usd"))
    early = body_of(capture(app, fresh["id"]), 400)["error"]
    assert early["code"] == "payment_intent_unexpected_state"
    missing = body_of(capture(app, "pi_nope"), 404)["error"]
    assert missing["code"] == "resource_missing"


def test_capture_is_idempotent_like_confirm() -> None:
    app = make_app(Clock())
    intent = authorized(app)
    first = capture(app, intent["id"], "amount_to_capture=700", key="cap-1")
    replay = capture(app, intent["id"], "amount_to_capture=700", key="cap-1")
    assert isinstance(first, Response) and isinstance(replay, Response)
    assert replay.body == first.body
    assert replay.headers["Idempotent-Replayed"] == "true"
    assert types_after(app, intent).count("charge.captured") == 1
    other = body_of(capture(app, intent["id"], "amount_to_capture=800", key="cap-1"), 400)
    assert other["error"]["type"] == "idempotency_error"


def test_capture_then_5xx_captures_and_saves_the_500() -> None:
    app = make_app(Clock(), create_then_5xx=1.0)
    app.faults.update({"create_then_5xx": 0.0})
    intent = authorized(app)
    app.faults.update({"create_then_5xx": 1.0})
    body_of(capture(app, intent["id"], key="cap-5xx"), 500)
    app.faults.update({"create_then_5xx": 0.0})
    body_of(capture(app, intent["id"], key="cap-5xx"), 500)  # the saved 500
    assert app.intents.get(intent["id"])["status"] == "succeeded"  # type: ignore[index]


class TestExpiry:
    def test_lazily_at_the_next_request_after_capture_before(self) -> None:
        clock = Clock()
        app = make_app(clock, window=60)
        intent = authorized(app)
        clock.now += 59
        assert get(app, f"/v1/payment_intents/{intent['id']}")["status"] == "requires_capture"
        clock.now += 1
        expired = get(app, f"/v1/payment_intents/{intent['id']}")
        assert (expired["status"], expired["cancellation_reason"]) == ("canceled", "automatic")
        assert (expired["amount_capturable"], expired["amount_received"]) == (0, 0)
        assert expired["canceled_at"] == START + 60
        assert types_after(app, intent) == ["charge.expired", "payment_intent.canceled"]
        charge = get(app, f"/v1/charges/{intent['latest_charge']}")
        assert (charge["captured"], charge["refunded"], charge["amount_refunded"]) == (
            False,
            True,
            2500,
        )
        expired_event = next(e for e in app.events.all() if e["type"] == "charge.expired")
        assert expired_event["data"]["object"]["refunded"] is True
        late = body_of(capture(app, intent["id"]), 400)["error"]
        assert late["code"] == "payment_intent_unexpected_state"

    def test_the_sweeper_expires_without_any_request(self) -> None:
        clock = Clock()
        app = make_app(clock, window=30)
        doomed, kept = authorized(app), authorized(app)
        body_of(capture(app, kept["id"]))
        sweeper = ExpirySweeper(app.expire_authorizations)
        assert sweeper.run_once() == 0
        clock.now += 30
        assert sweeper.run_once() == 1
        assert sweeper.run_once() == 0
        assert app.intents.get(doomed["id"])["status"] == "canceled"  # type: ignore[index]
        assert app.intents.get(kept["id"])["status"] == "succeeded"  # type: ignore[index]
        assert app.stats.snapshot()["authorizations_expired"] == 1

    def test_a_changed_window_applies_to_later_authorisations(self) -> None:
        clock = Clock()
        app = make_app(clock)
        before = authorized(app)
        admin = Admin(app)
        changed = admin.handle(
            Request("POST", "/_standin/authorizations", body=b'{"authorization_window_seconds": 5}')
        )
        assert json.loads(changed.body) == {"authorization_window_seconds": 5}
        after = authorized(app)
        clock.now += 5
        assert app.expire_authorizations() == 1
        assert app.intents.get(before["id"])["status"] == "requires_capture"  # type: ignore[index]
        assert app.intents.get(after["id"])["status"] == "canceled"  # type: ignore[index]

    def test_the_control_endpoint_expires_one_now(self) -> None:
        app = make_app(Clock())
        intent = authorized(app)
        path = f"/_standin/payment_intents/{intent['id']}/expire"
        reply = Admin(app).handle(Request("POST", path, body=b"{}"))
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["cancellation_reason"] == "automatic"
        again = Admin(app).handle(Request("POST", path, body=b"{}"))
        assert again.status == 400
        assert json.loads(again.body)["error"]["code"] == "payment_intent_unexpected_state"

    def test_a_canceled_authorisation_never_expires_later(self) -> None:
        clock = Clock()
        app = make_app(clock, window=10)
        intent = authorized(app)
        body_of(post(app, f"/v1/payment_intents/{intent['id']}/cancel"))
        assert get(app, f"/v1/charges/{intent['latest_charge']}")["amount_refunded"] == 2500
        clock.now += 10
        assert app.expire_authorizations() == 0
        assert app.intents.get(intent["id"])["cancellation_reason"] is None  # type: ignore[index]

    @pytest.mark.parametrize("window", ["0", "-1"])
    def test_the_window_must_be_positive(self, window: str) -> None:
        reply = Admin(make_app(Clock())).handle(
            Request(
                "POST",
                "/_standin/authorizations",
                body=f'{{"authorization_window_seconds": {window}}}'.encode(),
            )
        )
        assert reply.status == 400

    def test_the_sweeper_checks_its_interval(self) -> None:
        with pytest.raises(ValueError, match="positive"):
            ExpirySweeper(lambda: 0, interval=0)


def test_flags_and_environment_set_the_window_and_the_refund_knob() -> None:
    from stripe_standin.config import load_config  # noqa: PLC0415

    config = load_config(["--authorization-window", "120"], environ={})
    assert (config.authorization_window, config.refunds_pending) == (120.0, False)
    config = load_config([], environ={"STANDIN_REFUNDS_PENDING": "1"})
    assert (config.authorization_window, config.refunds_pending) == (WEEK, True)
    with pytest.raises(SystemExit):
        load_config(["--authorization-window", "0"], environ={})
