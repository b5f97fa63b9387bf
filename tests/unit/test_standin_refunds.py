"""Refunds without HTTP: Stripe's arithmetic (never more than was captured, also under
concurrent requests), refusals, statuses, the events, listing, idempotency and faults."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from stripe_standin.admin import Admin
from stripe_standin.app import Hangup, Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.faults import FaultSettings

KEY = "sk_test_refund123456"
AUTH = {"authorization": f"Bearer {KEY}", "host": "127.0.0.1:12401"}
NOW = 1_700_000_000


def make_app(*, pending: bool = False, sleep: Any = None, **faults: Any) -> StandinApp:
    config = StandinConfig(faults=FaultSettings(**faults), seed=1, refunds_pending=pending)
    return StandinApp(config, sleep=sleep or (lambda _s: None), clock=lambda: NOW)


def post(app: StandinApp, path: str, body: str = "", key: str | None = None) -> Response | Hangup:
    headers = dict(AUTH)
    if key is not None:
        headers["idempotency-key"] = key
    return app.handle_api(Request("POST", path, headers=headers, body=body.encode()))


def get(app: StandinApp, path: str, query: str = "", status: int = 200) -> dict[str, Any]:
    return body_of(app.handle_api(Request("GET", path, query=query, headers=AUTH)), status)


def body_of(reply: Response | Hangup, status: int = 200) -> dict[str, Any]:
    assert isinstance(reply, Response), reply
    assert reply.status == status, reply.body
    data: dict[str, Any] = json.loads(reply.body)
    return data


def paid(app: StandinApp, amount: int = 2500, manual: bool = False) -> dict[str, Any]:
    """A succeeded intent (a manual one is still waiting for capture)."""
    extra = "&capture_method=manual" if manual else ""
    intent = body_of(post(app, "/v1/payment_intents", f"amount={amount}&currency=usd{extra}"))
    confirm = f"/v1/payment_intents/{intent['id']}/confirm"
    return body_of(post(app, confirm, "payment_method=pm_card_visa"))


def refund(app: StandinApp, body: str, key: str | None = None) -> Response | Hangup:
    return post(app, "/v1/refunds", body, key)


def charge_of(app: StandinApp, intent: dict[str, Any]) -> dict[str, Any]:
    return get(app, f"/v1/charges/{intent['latest_charge']}")


def types(app: StandinApp, prefix: str = "") -> list[str]:
    return [e["type"] for e in app.events.all() if e["type"].startswith(prefix)]


def settle(app: StandinApp, refund_id: str, **payload: Any) -> Response:
    path = f"/_standin/refunds/{refund_id}/settle"
    return Admin(app).handle(Request("POST", path, body=json.dumps(payload).encode()))


def test_a_partial_then_the_rest() -> None:
    app = make_app()
    intent = paid(app)
    first = body_of(
        refund(app, f"payment_intent={intent['id']}&amount=1000&reason=requested_by_customer")
    )
    assert first["object"] == "refund"
    assert first["id"].startswith("re_")
    assert (first["amount"], first["status"], first["reason"]) == (
        1000,
        "succeeded",
        "requested_by_customer",
    )
    assert (first["charge"], first["payment_intent"]) == (intent["latest_charge"], intent["id"])
    assert first["currency"] == "usd"
    charge = charge_of(app, intent)
    assert (charge["amount_refunded"], charge["refunded"]) == (1000, False)
    rest = body_of(refund(app, f"charge={intent['latest_charge']}&metadata[why]=rest"))
    assert (rest["amount"], rest["metadata"]) == (1500, {"why": "rest"})
    charge = charge_of(app, intent)
    assert (charge["amount_refunded"], charge["refunded"]) == (2500, True)
    assert types(app, "refund.") + types(app, "charge.refunded") == [
        "refund.created",
        "refund.created",
        "charge.refunded",
        "charge.refunded",
    ]
    last = [e for e in app.events.all() if e["type"] == "charge.refunded"][-1]
    assert last["data"]["object"]["amount_refunded"] == 2500


def test_over_refunds_answer_stripes_errors() -> None:
    app = make_app()
    intent = paid(app)
    too_much = body_of(refund(app, f"payment_intent={intent['id']}&amount=2501"), 400)["error"]
    assert (too_much["type"], too_much["code"], too_much["param"]) == (
        "invalid_request_error",
        "amount_too_large",
        "amount",
    )
    assert too_much["message"] == (
        "Refund amount ($25.01) is greater than unrefunded amount on charge ($25.00)"
    )
    body_of(refund(app, f"payment_intent={intent['id']}&amount=2000"))
    still = body_of(refund(app, f"payment_intent={intent['id']}&amount=501"), 400)["error"]
    assert still["code"] == "amount_too_large"
    body_of(refund(app, f"payment_intent={intent['id']}"))
    done = body_of(refund(app, f"payment_intent={intent['id']}&amount=1"), 400)["error"]
    assert done["code"] == "charge_already_refunded"
    assert done["message"] == f"Charge {intent['latest_charge']} has already been refunded."
    assert sum(r["amount"] for r in app.refunds.all()) == 2500


def test_a_partial_capture_refunds_only_what_was_captured() -> None:
    app = make_app()
    intent = paid(app, manual=True)
    body_of(refund(app, f"charge={intent['latest_charge']}"), 400)  # not captured yet
    body_of(refund(app, f"payment_intent={intent['id']}"), 400)
    path = f"/v1/payment_intents/{intent['id']}/capture"
    body_of(post(app, path, "amount_to_capture=1200"))
    whole = body_of(refund(app, f"payment_intent={intent['id']}"))
    assert whole["amount"] == 1200
    charge = charge_of(app, intent)
    assert (charge["amount_refunded"], charge["refunded"]) == (1200, True)


@pytest.mark.parametrize(
    ("body", "code", "param"),
    [
        ("", "parameter_missing", None),
        ("payment_intent=pi_x&charge=ch_x", None, "payment_intent"),
        ("payment_intent=pi_nope", "resource_missing", "payment_intent"),
        ("charge=ch_nope", "resource_missing", "charge"),
        ("payment_intent={pi}&amount=0", None, "amount"),
        ("payment_intent={pi}&amount=ten", None, "amount"),
        ("payment_intent={pi}&reason=bored", None, "reason"),
        ("payment_intent={pi}&refund_everything=1", "parameter_unknown", "refund_everything"),
    ],
)
def test_refusals(body: str, code: str | None, param: str | None) -> None:
    app = make_app()
    intent = paid(app)
    reply = refund(app, body.format(pi=intent["id"]))
    status = 404 if code == "resource_missing" else 400
    error = body_of(reply, status)["error"]
    assert (error["code"], error["param"]) == (code, param)
    assert app.refunds.all() == []


def test_twenty_concurrent_refunds_of_thirty_percent_exactly_three_succeed() -> None:
    gate = threading.Barrier(20)
    app = make_app()
    intent = paid(app, amount=10_000)

    def together(_seconds: float) -> None:
        gate.wait(timeout=10)  # all twenty decide at once

    app._sleep = together

    def one(index: int) -> Response | Hangup:
        return refund(app, f"payment_intent={intent['id']}&amount=3000", key=f"r-{index}")

    with ThreadPoolExecutor(max_workers=20) as pool:
        replies = list(pool.map(one, range(20)))
    app._sleep = lambda _s: None
    answered = [r for r in replies if isinstance(r, Response)]
    assert len(answered) == 20
    ok = [r for r in answered if r.status == 200]
    refused = [json.loads(r.body)["error"] for r in answered if r.status != 200]
    assert len(ok) == 3
    assert len(refused) == 17
    assert {e["code"] for e in refused} == {"amount_too_large"}
    stored = app.refunds.all()
    assert sorted(r["id"] for r in stored) == sorted(json.loads(r.body)["id"] for r in ok)
    assert charge_of(app, intent)["amount_refunded"] == 9000


class TestPending:
    def test_pending_then_succeeded(self) -> None:
        app = make_app(pending=True)
        intent = paid(app)
        created = body_of(refund(app, f"payment_intent={intent['id']}&amount=2000"))
        assert created["status"] == "pending"
        assert charge_of(app, intent)["amount_refunded"] == 0
        # A pending refund holds its amount.
        held = body_of(refund(app, f"payment_intent={intent['id']}&amount=501"), 400)
        assert held["error"]["code"] == "amount_too_large"
        reply = settle(app, created["id"], succeed=True)
        assert reply.status == 200, reply.body
        assert json.loads(reply.body)["status"] == "succeeded"
        assert get(app, f"/v1/refunds/{created['id']}")["status"] == "succeeded"
        assert charge_of(app, intent)["amount_refunded"] == 2000
        assert types(app, "refund.") + types(app, "charge.refunded") == [
            "refund.created",
            "refund.updated",
            "charge.refunded",
        ]
        updated = next(e for e in app.events.all() if e["type"] == "refund.updated")
        assert updated["data"]["previous_attributes"] == {"status": "pending"}
        again = settle(app, created["id"], succeed=False)
        assert again.status == 400

    def test_pending_then_failed_gives_the_amount_back(self) -> None:
        app = make_app(pending=True)
        intent = paid(app)
        created = body_of(refund(app, f"payment_intent={intent['id']}"))
        reply = settle(app, created["id"], succeed=False, failure_reason="lost_or_stolen_card")
        failed = json.loads(reply.body)
        assert (failed["status"], failed["failure_reason"]) == ("failed", "lost_or_stolen_card")
        assert types(app, "refund.") == ["refund.created", "refund.updated", "refund.failed"]
        assert types(app, "charge.refunded") == []
        charge = charge_of(app, intent)
        assert (charge["amount_refunded"], charge["refunded"]) == (0, False)
        again = body_of(refund(app, f"payment_intent={intent['id']}"))
        assert again["amount"] == 2500

    def test_the_knob_at_runtime_and_settle_refusals(self) -> None:
        app = make_app()
        admin = Admin(app)
        config = admin.handle(
            Request("POST", "/_standin/refunds/config", body=b'{"pending": true}')
        )
        assert json.loads(config.body) == {"pending": True}
        intent = paid(app)
        created = body_of(refund(app, f"payment_intent={intent['id']}&amount=100"))
        assert created["status"] == "pending"
        bad = settle(app, created["id"], succeed=False, failure_reason="bored")
        assert bad.status == 400
        assert settle(app, "re_nope", succeed=True).status == 404
        listed = json.loads(admin.handle(Request("GET", "/_standin/refunds")).body)
        assert [r["id"] for r in listed["data"]] == [created["id"]]
        app.reset()
        assert app.refunds.pending is False
        assert app.refunds.all() == []


def test_list_and_retrieve() -> None:
    app = make_app()
    one, other = paid(app), paid(app)
    ids = [body_of(refund(app, f"payment_intent={one['id']}&amount=100"))["id"] for _ in range(3)]
    body_of(refund(app, f"payment_intent={other['id']}&amount=100"))
    listed = get(app, "/v1/refunds", f"payment_intent={one['id']}")
    assert (listed["object"], listed["url"], listed["has_more"]) == ("list", "/v1/refunds", False)
    assert [r["id"] for r in listed["data"]] == ids[::-1]
    page = get(app, "/v1/refunds", f"payment_intent={one['id']}&limit=2")
    assert ([r["id"] for r in page["data"]], page["has_more"]) == (ids[:0:-1], True)
    after = get(app, "/v1/refunds", f"payment_intent={one['id']}&limit=2&starting_after={ids[1]}")
    assert [r["id"] for r in after["data"]] == [ids[0]]
    by_charge = get(app, "/v1/refunds", f"charge={other['latest_charge']}")
    assert len(by_charge["data"]) == 1
    assert len(get(app, "/v1/refunds")["data"]) == 4
    assert get(app, f"/v1/refunds/{ids[0]}")["id"] == ids[0]
    missing = get(app, "/v1/refunds/re_nope", status=404)["error"]
    assert (missing["code"], missing["param"]) == ("resource_missing", "id")
    unknown = get(app, "/v1/refunds", "amount=3", status=400)["error"]
    assert unknown["code"] == "parameter_unknown"


def test_idempotent_like_create_and_faults_apply() -> None:
    app = make_app()
    intent = paid(app)
    body = f"payment_intent={intent['id']}&amount=700"
    first, replay = refund(app, body, key="rf-1"), refund(app, body, key="rf-1")
    assert isinstance(first, Response) and isinstance(replay, Response)
    assert (replay.body, replay.headers["Idempotent-Replayed"]) == (first.body, "true")
    assert len(app.refunds.all()) == 1
    # create_then_5xx refunds, then answers a 500 that is saved against the key.
    app.faults.update({"create_then_5xx": 1.0})
    body_of(refund(app, f"payment_intent={intent['id']}&amount=300", key="rf-2"), 500)
    app.faults.update({"create_then_5xx": 0.0})
    body_of(refund(app, f"payment_intent={intent['id']}&amount=300", key="rf-2"), 500)
    assert [r["amount"] for r in app.refunds.all()] == [700, 300]
    app.faults.update({"fail_429": 1.0})
    body_of(refund(app, f"payment_intent={intent['id']}&amount=1"), 429)
    app.faults.update({"fail_429": 0.0, "lose_response": 1.0})
    assert isinstance(refund(app, f"payment_intent={intent['id']}&amount=5"), Hangup)
    app.faults.update({"lose_response": 0.0, "drop": 1.0})
    assert isinstance(refund(app, f"payment_intent={intent['id']}&amount=7"), Hangup)
    app.faults.update({"drop": 0.0})
    assert [r["amount"] for r in app.refunds.all()] == [700, 300, 5]


def test_metadata_is_kept_and_checked_like_stripes() -> None:
    app = make_app()
    intent = paid(app)
    body = f"payment_intent={intent['id']}&amount=100&metadata[refund_id]=r-1&metadata[x]="
    made = body_of(refund(app, body))
    assert made["metadata"] == {"refund_id": "r-1"}
    assert get(app, f"/v1/refunds/{made['id']}")["metadata"] == {"refund_id": "r-1"}
    listed = get(app, "/v1/refunds", f"payment_intent={intent['id']}")["data"]
    assert [r["metadata"] for r in listed] == [{"refund_id": "r-1"}]
    created_event = next(e for e in app.events.all() if e["type"] == "refund.created")
    assert created_event["data"]["object"]["metadata"] == {"refund_id": "r-1"}
    nested = body_of(refund(app, f"payment_intent={intent['id']}&metadata[a][b]=c"), 400)
    assert nested["error"]["param"] == "metadata[a]"
    long_value = "v" * 501
    too_long = body_of(refund(app, f"payment_intent={intent['id']}&metadata[k]={long_value}"), 400)
    assert too_long["error"]["param"] == "metadata[k]"
    assert len(app.refunds.all()) == 1


def test_list_filters_exactly_by_payment_intent_and_created() -> None:
    now = [NOW]
    config = StandinConfig(faults=FaultSettings(), seed=1)
    app = StandinApp(config, sleep=lambda _s: None, clock=lambda: now[0])
    one, other = paid(app), paid(app)
    early = body_of(refund(app, f"payment_intent={one['id']}&amount=100"))
    now[0] += 10
    late = body_of(refund(app, f"payment_intent={one['id']}&amount=100"))
    body_of(refund(app, f"payment_intent={other['id']}&amount=100"))
    # an id that is a prefix of another's matches nothing: the filter is equality
    assert get(app, "/v1/refunds", f"payment_intent={one['id'][:-1]}")["data"] == []
    assert get(app, "/v1/refunds", "payment_intent=pi_unknown")["data"] == []
    ours = get(app, "/v1/refunds", f"payment_intent={one['id']}")["data"]
    assert [(r["id"], r["payment_intent"]) for r in ours] == [
        (late["id"], one["id"]),
        (early["id"], one["id"]),
    ]
    after = get(app, "/v1/refunds", f"payment_intent={one['id']}&created[gt]={NOW}")["data"]
    assert [r["id"] for r in after] == [late["id"]]
    exact = get(app, "/v1/refunds", f"payment_intent={one['id']}&created={NOW}")["data"]
    assert [r["id"] for r in exact] == [early["id"]]
    bad = get(app, "/v1/refunds", "created[after]=1", status=400)["error"]
    assert (bad["code"], bad["param"]) == ("parameter_unknown", "created[after]")
