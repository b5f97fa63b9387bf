"""``expand[]=latest_charge`` on every PaymentIntent answer, without HTTP, and Stripe's
refusals of the paths the stand-in cannot follow (checked before anything is done)."""

import json
from typing import Any

import pytest

from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.faults import FaultSettings

KEY = "sk_test_expand123456"
AUTH = {"authorization": f"Bearer {KEY}", "host": "127.0.0.1:12402"}
NOW = 1_700_000_000
CHARGE = "expand[]=latest_charge"


def make_app() -> StandinApp:
    config = StandinConfig(faults=FaultSettings(), seed=1)
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


def created(app: StandinApp, manual: bool = True, metadata: str = "") -> dict[str, Any]:
    extra = "&capture_method=manual" if manual else ""
    body = f"amount=2500&currency=usd{extra}{metadata}"
    return body_of(post(app, "/v1/payment_intents", body))


def confirmed(app: StandinApp, intent: dict[str, Any], extra: str = "") -> dict[str, Any]:
    path = f"/v1/payment_intents/{intent['id']}/confirm"
    return body_of(post(app, path, "payment_method=pm_card_visa" + extra))


def assert_refused(reply: Response | Hangup, message: str) -> None:
    error = body_of(reply, 400)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["message"] == message
    assert error["code"] is None and error["param"] is None


def test_retrieve_expands_the_latest_charge_with_its_capture_before() -> None:
    app = make_app()
    intent = confirmed(app, created(app))
    plain = body_of(get(app, f"/v1/payment_intents/{intent['id']}"))
    assert plain["latest_charge"] == intent["latest_charge"]

    # The SDK sends lists as expand[0]=…; expand[]=… is curl's spelling: both work.
    for query in ("expand[0]=latest_charge", CHARGE):
        expanded = body_of(get(app, f"/v1/payment_intents/{intent['id']}", query))
        charge = expanded["latest_charge"]
        assert charge["object"] == "charge"
        assert charge["id"] == intent["latest_charge"]
        assert charge["payment_intent"] == intent["id"]
        assert charge["payment_method_details"]["card"]["capture_before"] > NOW
        assert {k: v for k, v in expanded.items() if k != "latest_charge"} == {
            k: v for k, v in plain.items() if k != "latest_charge"
        }
    # Expanding is per answer: the stored intent keeps the id.
    assert (
        body_of(get(app, f"/v1/payment_intents/{intent['id']}"))["latest_charge"]
        == (intent["latest_charge"])
    )


def test_a_null_latest_charge_stays_null() -> None:
    app = make_app()
    intent = body_of(post(app, "/v1/payment_intents", f"amount=2500&currency=usd&{CHARGE}"))
    assert intent["latest_charge"] is None
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}", CHARGE))["latest_charge"] is None


def test_confirm_capture_and_cancel_answer_the_charge_after_the_change() -> None:
    app = make_app()
    intent = confirmed(app, created(app), f"&{CHARGE}")
    assert intent["latest_charge"]["captured"] is False

    captured = body_of(
        post(app, f"/v1/payment_intents/{intent['id']}/capture", f"amount_to_capture=1000&{CHARGE}")
    )
    assert captured["status"] == "succeeded"
    assert captured["latest_charge"]["captured"] is True
    assert captured["latest_charge"]["amount_captured"] == 1000

    other = confirmed(app, created(app))
    canceled = body_of(
        post(
            app,
            f"/v1/payment_intents/{other['id']}/cancel",
            f"cancellation_reason=duplicate&{CHARGE}",
        )
    )
    assert canceled["status"] == "canceled"
    assert canceled["latest_charge"]["refunded"] is True  # the authorisation released


def test_a_replay_answers_the_expanded_first_answer() -> None:
    app = make_app()
    intent = confirmed(app, created(app))
    path = f"/v1/payment_intents/{intent['id']}/capture"
    first = post(app, path, CHARGE, key="capture-1")
    again = post(app, path, CHARGE, key="capture-1")
    assert isinstance(first, Response) and isinstance(again, Response)
    assert again.headers["Idempotent-Replayed"] == "true"
    assert json.loads(again.body) == json.loads(first.body)
    assert json.loads(again.body)["latest_charge"]["object"] == "charge"


def test_search_expands_data_latest_charge() -> None:
    app = make_app()
    intent = confirmed(app, created(app, metadata="&metadata[payment_id]=p-1"))
    query = "query=metadata['payment_id']:'p-1'"
    found = body_of(get(app, "/v1/payment_intents/search", f"{query}&expand[]=data.latest_charge"))
    assert [i["latest_charge"]["id"] for i in found["data"]] == [intent["latest_charge"]]
    assert_refused(
        get(app, "/v1/payment_intents/search", f"{query}&{CHARGE}"),
        "This property cannot be expanded (latest_charge). "
        "You may want to try expanding 'data.latest_charge' instead.",
    )


@pytest.mark.parametrize(
    ("expand", "message"),
    [
        (
            "expand[]=latest_charge.balance_transaction",
            "This property cannot be expanded (latest_charge.balance_transaction).",
        ),
        (
            "expand[]=latest_charge.balance_transaction.source",
            "This property cannot be expanded (latest_charge.balance_transaction).",
        ),
        ("expand[]=customerz", "This property cannot be expanded (customerz)."),
        ("expand[]=metadata", "This property cannot be expanded (metadata)."),
        ("expand[]=a.b.c.d.e", "You cannot expand more than 4 levels of a property."),
    ],
)
def test_paths_it_cannot_follow_answer_stripes_refusal(expand: str, message: str) -> None:
    app = make_app()
    intent = confirmed(app, created(app))
    assert_refused(get(app, f"/v1/payment_intents/{intent['id']}", expand), message)
    # ...before the lookup: a bad path outranks the 404
    assert_refused(get(app, "/v1/payment_intents/pi_missing", expand), message)


def test_expand_must_be_an_array() -> None:
    app = make_app()
    error = body_of(post(app, "/v1/payment_intents", "amount=2500&currency=usd&expand=x"), 400)
    assert (error["error"]["message"], error["error"]["param"]) == ("Invalid array", "expand")


def test_a_refused_path_does_nothing_and_saves_nothing() -> None:
    app = make_app()
    bad = "expand[]=latest_charge.balance_transaction"
    reply = post(app, "/v1/payment_intents", f"amount=2500&currency=usd&{bad}", key="create-1")
    assert body_of(reply, 400)
    assert app.intents.all() == []

    intent = confirmed(app, created(app))
    path = f"/v1/payment_intents/{intent['id']}/capture"
    assert body_of(post(app, path, bad, key="capture-1"), 400)
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}"))["status"] == "requires_capture"
    # the key was not used up: the same key with good parameters captures
    assert body_of(post(app, path, CHARGE, key="capture-1"))["status"] == "succeeded"

    other = confirmed(app, created(app))
    cancel = f"/v1/payment_intents/{other['id']}/cancel"
    assert body_of(post(app, cancel, bad), 400)
    assert body_of(get(app, f"/v1/payment_intents/{other['id']}"))["status"] == "requires_capture"


def test_retrieve_refuses_unknown_parameters() -> None:
    app = make_app()
    intent = created(app)
    error = body_of(get(app, f"/v1/payment_intents/{intent['id']}", "colour=blue"), 400)["error"]
    assert (error["code"], error["param"]) == ("parameter_unknown", "colour")
    secret = intent["client_secret"]
    assert body_of(get(app, f"/v1/payment_intents/{intent['id']}", f"client_secret={secret}"))
