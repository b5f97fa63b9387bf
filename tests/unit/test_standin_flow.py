"""The PaymentIntent state machine behind confirm, cancel, 3-D Secure and settlement, without
HTTP: statuses, Stripe's error shapes, the events each move records, idempotency."""

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.faults import FaultSettings
from stripe_standin.methods import TEST_METHODS, Outcome, success_tokens

KEY = "sk_test_flow123456"
AUTH = {"authorization": f"Bearer {KEY}", "host": "127.0.0.1:12100"}
NOW = 1_700_000_000


def make_app(**faults: Any) -> StandinApp:
    config = StandinConfig(faults=FaultSettings(**faults), seed=1)
    return StandinApp(config, sleep=lambda _s: None, clock=lambda: NOW)


def post(app: StandinApp, path: str, body: str = "", key: str | None = None) -> Response | Hangup:
    headers = dict(AUTH)
    if key is not None:
        headers["idempotency-key"] = key
    return app.handle_api(Request("POST", path, headers=headers, body=body.encode()))


def get(app: StandinApp, path: str, query: str = "") -> Response | Hangup:
    return app.handle_api(Request("GET", path, query=query, headers=AUTH))


def body_of(reply: Response | Hangup, status: int = 200) -> dict[str, Any]:
    assert isinstance(reply, Response), reply
    assert reply.status == status, reply.body
    data: dict[str, Any] = json.loads(reply.body)
    return data


def create(app: StandinApp, extra: str = "") -> dict[str, Any]:
    body = "amount=2500&currency=usd&metadata[payment_id]=p-1" + extra
    return body_of(post(app, "/v1/payment_intents", body, key=f"create-{len(app.intents)}"))


def confirm(app: StandinApp, intent_id: str, pm: str, key: str | None = None) -> Response | Hangup:
    return post(app, f"/v1/payment_intents/{intent_id}/confirm", f"payment_method={pm}", key)


def control(app: StandinApp, intent_id: str, action: str, succeed: bool) -> Response:
    body = json.dumps({"succeed": succeed}).encode()
    path = f"/_standin/payment_intents/{intent_id}/{action}"
    return Admin(app).handle(Request("POST", path, body=body))


def event_types(app: StandinApp) -> list[str]:
    return [event["type"] for event in app.events.all()]


def test_a_succeeding_card_succeeds_with_a_charge_and_stripes_events() -> None:
    app = make_app()
    intent = create(app)
    confirmed = body_of(confirm(app, intent["id"], "pm_card_visa"))
    assert confirmed["status"] == "succeeded"
    assert confirmed["amount_received"] == 2500
    assert confirmed["latest_charge"].startswith("ch_")
    assert confirmed["payment_method"].startswith("pm_")
    assert confirmed["last_payment_error"] is None
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}")) == confirmed
    assert event_types(app) == [
        "payment_intent.created",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]
    created, charge, succeeded = app.events.all()
    assert created["data"]["object"]["status"] == "requires_payment_method"
    assert charge["data"]["object"]["id"] == confirmed["latest_charge"]
    assert charge["data"]["object"]["amount_captured"] == 2500
    assert succeeded["data"]["object"] == confirmed


@pytest.mark.parametrize("token", success_tokens())
def test_every_success_token_succeeds(token: str) -> None:
    app = make_app()
    intent = create(app)
    assert body_of(confirm(app, intent["id"], token))["status"] == "succeeded"


@pytest.mark.parametrize(
    ("token", "code", "decline_code", "message"),
    [
        ("pm_card_chargeDeclined", "card_declined", "generic_decline", "Your card was declined."),
        (
            "pm_card_chargeDeclinedInsufficientFunds",
            "card_declined",
            "insufficient_funds",
            "Your card has insufficient funds.",
        ),
        (
            "pm_card_chargeDeclinedExpiredCard",
            "expired_card",
            "expired_card",
            "Your card has expired.",
        ),
    ],
)
def test_a_declined_card_answers_402_and_returns_to_requires_payment_method(
    token: str, code: str, decline_code: str, message: str
) -> None:
    app = make_app()
    intent = create(app)
    error = body_of(confirm(app, intent["id"], token), 402)["error"]
    assert (error["type"], error["code"], error["decline_code"], error["message"]) == (
        "card_error",
        code,
        decline_code,
        message,
    )
    assert error["charge"].startswith("ch_")
    assert error["payment_method"]["object"] == "payment_method"
    assert error["doc_url"].endswith(code.replace("_", "-"))
    assert error["payment_intent"]["id"] == intent["id"]

    after = body_of(get(app, f"/v1/payment_intents/{intent['id']}"))
    assert after["status"] == "requires_payment_method"
    assert after["payment_method"] is None
    assert after["amount_received"] == 0
    assert after["latest_charge"] == error["charge"]
    last = after["last_payment_error"]
    assert (last["type"], last["code"], last["decline_code"], last["message"]) == (
        "card_error",
        code,
        decline_code,
        message,
    )
    assert error["payment_intent"] == after
    assert event_types(app)[1:] == ["charge.failed", "payment_intent.payment_failed"]


def test_after_a_decline_another_card_can_pay() -> None:
    app = make_app()
    intent = create(app)
    body_of(confirm(app, intent["id"], "pm_card_chargeDeclined"), 402)
    paid = body_of(confirm(app, intent["id"], "pm_card_mastercard"))
    assert (paid["status"], paid["last_payment_error"]) == ("succeeded", None)


def test_3ds_requires_action_until_completed() -> None:
    app = make_app()
    intent = create(app)
    pending = body_of(confirm(app, intent["id"], "pm_card_authenticationRequired"))
    assert pending["status"] == "requires_action"
    assert pending["next_action"]["type"] == "use_stripe_sdk"
    assert pending["next_action"]["use_stripe_sdk"]["stripe_js"] == (
        f"http://127.0.0.1:12100/_standin/payment_intents/{intent['id']}/3ds"
    )
    done = body_of(control(app, intent["id"], "3ds", succeed=True))
    assert (done["status"], done["next_action"], done["amount_received"]) == (
        "succeeded",
        None,
        2500,
    )
    assert event_types(app)[1:] == [
        "payment_intent.requires_action",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]


def test_3ds_with_a_return_url_redirects() -> None:
    app = make_app()
    intent = create(app)
    body = "payment_method=pm_card_threeDSecure2Required&return_url=https://shop.example/back"
    pending = body_of(post(app, f"/v1/payment_intents/{intent['id']}/confirm", body))
    assert pending["next_action"]["type"] == "redirect_to_url"
    assert pending["next_action"]["redirect_to_url"]["return_url"] == "https://shop.example/back"


def test_failed_3ds_is_an_authentication_failure() -> None:
    app = make_app()
    intent = create(app)
    body_of(confirm(app, intent["id"], "pm_card_authenticationRequired"))
    failed = body_of(control(app, intent["id"], "3ds", succeed=False))
    assert failed["status"] == "requires_payment_method"
    assert failed["payment_method"] is None
    error = failed["last_payment_error"]
    assert (error["type"], error["code"]) == (
        "invalid_request_error",
        "payment_intent_authentication_failure",
    )
    assert event_types(app)[-1] == "payment_intent.payment_failed"
    # Only an intent in requires_action can be authenticated.
    again = control(app, intent["id"], "3ds", succeed=True)
    assert again.status == 400
    assert json.loads(again.body)["error"]["code"] == "payment_intent_unexpected_state"


def test_3ds_then_declined_charge() -> None:
    app = make_app()
    intent = create(app)
    token = "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds"
    body_of(confirm(app, intent["id"], token))
    after = body_of(control(app, intent["id"], "3ds", succeed=True))
    assert after["status"] == "requires_payment_method"
    assert after["last_payment_error"]["decline_code"] == "insufficient_funds"


def test_ach_is_processing_until_settled() -> None:
    app = make_app()
    intent = create(app, "&payment_method_types[0]=card&payment_method_types[1]=us_bank_account")
    processing = body_of(confirm(app, intent["id"], "pm_usBankAccount_success"))
    assert processing["status"] == "processing"
    assert processing["latest_charge"].startswith("py_")
    assert processing["amount_received"] == 0
    # Processing cannot be confirmed again, nor canceled.
    again = body_of(confirm(app, intent["id"], "pm_card_visa"), 400)["error"]
    assert again["code"] == "payment_intent_unexpected_state"
    assert again["message"] == (
        "You cannot confirm this PaymentIntent because it has a status of processing."
    )
    cancel = body_of(post(app, f"/v1/payment_intents/{intent['id']}/cancel"), 400)["error"]
    assert cancel["code"] == "payment_intent_unexpected_state"
    settled = body_of(control(app, intent["id"], "settle", succeed=True))
    assert (settled["status"], settled["amount_received"]) == ("succeeded", 2500)
    assert event_types(app)[1:] == [
        "charge.pending",
        "payment_intent.processing",
        "charge.succeeded",
        "payment_intent.succeeded",
    ]
    assert app.events.all()[-2]["data"]["object"]["status"] == "succeeded"


def test_ach_failure_names_the_bank_reason() -> None:
    app = make_app()
    intent = create(app, "&payment_method_types[0]=us_bank_account")
    body_of(confirm(app, intent["id"], "pm_usBankAccount_accountClosed"))
    failed = body_of(control(app, intent["id"], "settle", succeed=False))
    assert failed["status"] == "requires_payment_method"
    assert failed["last_payment_error"]["code"] == "account_closed"
    assert event_types(app)[-2:] == ["charge.failed", "payment_intent.payment_failed"]
    assert app.events.all()[-2]["data"]["object"]["failure_code"] == "account_closed"


def test_a_bank_account_on_a_card_only_intent_is_refused() -> None:
    app = make_app()
    intent = create(app)
    error = body_of(confirm(app, intent["id"], "pm_usBankAccount_success"), 400)["error"]
    assert error["code"] == "payment_intent_incompatible_payment_method"
    assert error["param"] == "payment_method"
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}"))["status"] == (
        "requires_payment_method"
    )


def test_confirm_refusals() -> None:
    app = make_app()
    intent = create(app)
    missing = body_of(post(app, f"/v1/payment_intents/{intent['id']}/confirm"), 400)["error"]
    assert "missing a payment method" in missing["message"]
    unknown = body_of(confirm(app, intent["id"], "pm_nope"), 404)["error"]
    assert (unknown["code"], unknown["param"]) == ("resource_missing", "payment_method")
    assert unknown["message"] == "No such PaymentMethod: 'pm_nope'"
    no_intent = body_of(confirm(app, "pi_nope", "pm_card_visa"), 404)["error"]
    assert (no_intent["code"], no_intent["param"]) == ("resource_missing", "intent")
    bad = body_of(post(app, f"/v1/payment_intents/{intent['id']}/confirm", "bogus=1"), 400)
    assert bad["error"]["code"] == "parameter_unknown"
    body_of(confirm(app, intent["id"], "pm_card_visa"))
    done = body_of(confirm(app, intent["id"], "pm_card_visa"), 400)["error"]
    assert done["code"] == "payment_intent_unexpected_state"
    assert done["payment_intent"]["status"] == "succeeded"


def test_a_payment_method_id_from_an_earlier_confirm_can_be_reused() -> None:
    app = make_app()
    first = body_of(confirm(app, create(app)["id"], "pm_card_visa"))
    second = create(app)
    reused = body_of(confirm(app, second["id"], first["payment_method"]))
    assert (reused["status"], reused["payment_method"]) == ("succeeded", first["payment_method"])


def test_manual_capture_stops_at_requires_capture_and_can_be_canceled() -> None:
    app = make_app()
    intent = create(app, "&capture_method=manual")
    held = body_of(confirm(app, intent["id"], "pm_card_visa"))
    assert (held["status"], held["amount_capturable"], held["amount_received"]) == (
        "requires_capture",
        2500,
        0,
    )
    assert event_types(app)[-1] == "payment_intent.amount_capturable_updated"
    canceled = body_of(post(app, f"/v1/payment_intents/{intent['id']}/cancel"))
    assert (canceled["status"], canceled["amount_capturable"]) == ("canceled", 0)


@pytest.mark.parametrize(
    "reason", ["duplicate", "fraudulent", "requested_by_customer", "abandoned"]
)
def test_cancel_with_each_reason(reason: str) -> None:
    app = make_app()
    intent = create(app)
    canceled = body_of(
        post(app, f"/v1/payment_intents/{intent['id']}/cancel", f"cancellation_reason={reason}")
    )
    assert (canceled["status"], canceled["cancellation_reason"], canceled["canceled_at"]) == (
        "canceled",
        reason,
        NOW,
    )
    (event,) = [e for e in app.events.all() if e["type"] == "payment_intent.canceled"]
    assert event["data"]["object"] == canceled


def test_cancel_refusals() -> None:
    app = make_app()
    intent = create(app)
    path = f"/v1/payment_intents/{intent['id']}/cancel"
    wrong = body_of(post(app, path, "cancellation_reason=bored"), 400)["error"]
    assert wrong["param"] == "cancellation_reason"
    body_of(post(app, path))
    twice = body_of(post(app, path), 400)["error"]
    assert twice["code"] == "payment_intent_unexpected_state"
    assert twice["message"] == (
        "You cannot cancel this PaymentIntent because it has a status of canceled. Only a "
        "PaymentIntent with one of the following statuses may be canceled: "
        "requires_payment_method, requires_capture, requires_confirmation, requires_action."
    )
    confirm_canceled = body_of(confirm(app, intent["id"], "pm_card_visa"), 400)["error"]
    assert confirm_canceled["code"] == "payment_intent_unexpected_state"
    succeeded = create(app)
    body_of(confirm(app, succeeded["id"], "pm_card_visa"))
    late = body_of(post(app, f"/v1/payment_intents/{succeeded['id']}/cancel"), 400)["error"]
    assert late["code"] == "payment_intent_unexpected_state"


def test_confirm_replays_its_saved_answer_including_a_decline() -> None:
    app = make_app()
    intent = create(app)
    first = confirm(app, intent["id"], "pm_card_chargeDeclined", key="confirm-1")
    again = confirm(app, intent["id"], "pm_card_chargeDeclined", key="confirm-1")
    assert isinstance(first, Response) and isinstance(again, Response)
    assert (again.status, again.body) == (402, first.body)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert event_types(app).count("payment_intent.payment_failed") == 1
    other = confirm(app, intent["id"], "pm_card_visa", key="confirm-1")
    assert body_of(other, 400)["error"]["type"] == "idempotency_error"


def test_cancel_replays_and_its_events_carry_the_request() -> None:
    app = make_app()
    intent = create(app)
    path = f"/v1/payment_intents/{intent['id']}/cancel"
    first = post(app, path, "cancellation_reason=abandoned", key="cancel-1")
    again = post(app, path, "cancellation_reason=abandoned", key="cancel-1")
    assert isinstance(first, Response) and isinstance(again, Response)
    assert (again.status, again.body) == (200, first.body)
    event = app.events.all()[-1]
    assert event["type"] == "payment_intent.canceled"
    assert event["request"] == {"id": first.headers["Request-Id"], "idempotency_key": "cancel-1"}


def test_injected_5xx_on_confirm_is_saved_and_changes_nothing() -> None:
    app = make_app(fail_5xx=1.0)
    app.faults.update({"fail_5xx": 0.0})
    intent = create(app)
    app.faults.update({"fail_5xx": 1.0})
    first = confirm(app, intent["id"], "pm_card_visa", key="confirm-5xx")
    assert isinstance(first, Response) and first.status == 500
    app.faults.update({"fail_5xx": 0.0})
    replay = confirm(app, intent["id"], "pm_card_visa", key="confirm-5xx")
    assert isinstance(replay, Response)
    assert (replay.status, replay.headers.get("Idempotent-Replayed")) == (500, "true")
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}"))["status"] == (
        "requires_payment_method"
    )


def test_lost_response_on_confirm_still_confirms() -> None:
    app = make_app()
    intent = create(app)
    app.faults.update({"lose_response": 1.0})
    lost = confirm(app, intent["id"], "pm_card_visa", key="confirm-lost")
    assert isinstance(lost, Hangup)
    app.faults.update({"lose_response": 0.0})
    replay = body_of(confirm(app, intent["id"], "pm_card_visa", key="confirm-lost"))
    assert replay["status"] == "succeeded"
    assert app.stats.snapshot()["payment_intents_confirmed"] == 1


def test_every_test_method_has_a_known_outcome() -> None:
    for token, method in TEST_METHODS.items():
        assert token.startswith("pm_")
        if method.outcome is Outcome.DECLINE or method.outcome is Outcome.ASYNC:
            assert method.decline is not None, token


def test_reset_forgets_events() -> None:
    app = make_app()
    body_of(confirm(app, create(app)["id"], "pm_card_visa"))
    assert len(app.events) == 3
    app.reset()
    assert len(app.events) == 0
    assert body_of(get(app, "/v1/events"))["data"] == []


def test_the_latest_charge_can_be_retrieved_and_follows_settlement() -> None:
    app = make_app()
    intent = create(app, "&payment_method_types[0]=us_bank_account")
    charge_id = body_of(confirm(app, intent["id"], "pm_usBankAccount_success"))["latest_charge"]
    pending = body_of(get(app, f"/v1/charges/{charge_id}"))
    assert (pending["object"], pending["status"], pending["paid"]) == ("charge", "pending", False)
    assert pending["payment_intent"] == intent["id"]
    body_of(control(app, intent["id"], "settle", succeed=True))
    settled = body_of(get(app, f"/v1/charges/{charge_id}"))
    assert (settled["status"], settled["paid"], settled["amount_captured"]) == (
        "succeeded",
        True,
        2500,
    )
    missing = body_of(get(app, "/v1/charges/ch_nope"), 404)["error"]
    assert missing["message"] == "No such charge: 'ch_nope'"


def test_concurrent_confirms_of_one_intent_succeed_once() -> None:
    app = make_app()
    intent = create(app)
    with ThreadPoolExecutor(max_workers=16) as pool:
        replies = list(
            pool.map(
                lambda n: confirm(app, intent["id"], "pm_card_visa", key=f"race-{n}"), range(32)
            )
        )
    statuses = sorted(r.status for r in replies if isinstance(r, Response))
    assert statuses == [200] + [400] * 31
    assert event_types(app).count("payment_intent.succeeded") == 1
    assert event_types(app).count("charge.succeeded") == 1
