"""``GET /v1/events`` and ``/v1/events/{id}``: Stripe's list shape, cursors and filters."""

import json
from typing import Any

import pytest

from stripe_standin.app import Request, Response, StandinApp
from stripe_standin.config import StandinConfig
from stripe_standin.errors import StripeError
from stripe_standin.events import API_VERSION, EventStore, Origin

KEY = "sk_test_events123456"
AUTH = {"authorization": f"Bearer {KEY}"}


def store_with(count: int, *, start: int = 1000) -> tuple[EventStore, list[str]]:
    """``count`` events, one a second, alternating payment_intent.* and charge.* types."""
    store = EventStore()
    ids = []
    for n in range(count):
        kind = "payment_intent.succeeded" if n % 2 == 0 else "charge.succeeded"
        event = store.record(kind, {"id": f"obj_{n}"}, Origin(f"req_{n}", None), created=start + n)
        ids.append(event["id"])
    return store, ids


def listed(store: EventStore, **form: Any) -> tuple[list[str], bool]:
    page = store.list(form)
    assert (page["object"], page["url"]) == ("list", "/v1/events")
    return [e["id"] for e in page["data"]], page["has_more"]


def test_event_shape() -> None:
    store = EventStore()
    event = store.record("payment_intent.created", {"id": "pi_1"}, Origin("req_1", "k"), created=5)
    assert event["id"].startswith("evt_") and len(event["id"]) == 28
    assert event == {
        "id": event["id"],
        "object": "event",
        "api_version": API_VERSION,
        "created": 5,
        "data": {"object": {"id": "pi_1"}},
        "livemode": False,
        "pending_webhooks": 0,
        "request": {"id": "req_1", "idempotency_key": "k"},
        "type": "payment_intent.created",
    }


def test_newest_first_with_default_limit_10() -> None:
    store, ids = store_with(12)
    page, more = listed(store)
    assert page == list(reversed(ids))[:10]
    assert more is True
    page, more = listed(store, limit="12")
    assert (page, more) == (list(reversed(ids)), False)


def test_paging_forward_with_starting_after_visits_every_event_once() -> None:
    store, ids = store_with(7)
    seen: list[str] = []
    cursor: str | None = None
    while True:
        form = {"limit": "3"} | ({"starting_after": cursor} if cursor else {})
        page, more = listed(store, **form)
        seen += page
        if not more:
            break
        cursor = page[-1]
    assert seen == list(reversed(ids))


def test_ending_before_pages_back_towards_newer_events() -> None:
    store, ids = store_with(7)
    newest_first = list(reversed(ids))
    page, more = listed(store, limit="2", ending_before=newest_first[4])
    assert page == newest_first[2:4]
    assert more is True
    page, more = listed(store, limit="5", ending_before=newest_first[2])
    assert (page, more) == (newest_first[:2], False)


def test_created_ranges_and_exact() -> None:
    store, ids = store_with(6, start=1000)  # created 1000..1005
    page, _ = listed(store, created={"gte": "1002", "lt": "1005"})
    assert page == [ids[4], ids[3], ids[2]]
    page, _ = listed(store, created={"gt": "1002", "lte": "1003"})
    assert page == [ids[3]]
    page, _ = listed(store, created="1001")
    assert page == [ids[1]]


def test_type_with_wildcard_and_types() -> None:
    store, ids = store_with(5)
    page, _ = listed(store, type="charge.succeeded")
    assert page == [ids[3], ids[1]]
    page, _ = listed(store, type="payment_intent.*")
    assert page == [ids[4], ids[2], ids[0]]
    page, _ = listed(store, types=["charge.succeeded", "payment_intent.succeeded"], limit="100")
    assert page == list(reversed(ids))


def test_filters_with_cursor() -> None:
    store, ids = store_with(8)
    # The cursor need not match the filter: it only marks a place in the list.
    page, more = listed(store, type="charge.*", starting_after=ids[6], limit="2")
    assert (page, more) == ([ids[5], ids[3]], True)


@pytest.mark.parametrize(
    ("form", "param"),
    [
        ({"limit": "0"}, "limit"),
        ({"limit": "101"}, "limit"),
        ({"limit": "x"}, "limit"),
        ({"starting_after": "evt_a", "ending_before": "evt_b"}, "ending_before"),
        ({"type": "a", "types": ["b"]}, "types"),
        ({"types": [f"t{n}" for n in range(21)]}, "types"),
        ({"created": {"between": "1"}}, "created[between]"),
        ({"created": {"gt": "soon"}}, "created[gt]"),
        ({"colour": "blue"}, "colour"),
        ({"starting_after": "evt_missing"}, "starting_after"),
    ],
)
def test_invalid_list_parameters(form: dict[str, Any], param: str) -> None:
    store, _ = store_with(2)
    with pytest.raises(StripeError) as info:
        store.list(form)
    assert info.value.param == param
    assert info.value.status in (400, 404)


def test_the_http_routes_decode_brackets_and_retrieve() -> None:
    app = StandinApp(StandinConfig(seed=1), sleep=lambda _s: None, clock=lambda: 1000)
    store = app.events
    first = store.record("charge.succeeded", {"id": "ch_1"}, Origin(), created=1000)
    store.record("payment_intent.succeeded", {"id": "pi_1"}, Origin(), created=1001)
    query = "types[]=charge.succeeded&created[lte]=1000&limit=5"
    reply = app.handle_api(Request("GET", "/v1/events", query=query, headers=AUTH))
    assert isinstance(reply, Response) and reply.status == 200, reply
    assert [e["id"] for e in json.loads(reply.body)["data"]] == [first["id"]]

    reply = app.handle_api(Request("GET", f"/v1/events/{first['id']}", headers=AUTH))
    assert isinstance(reply, Response) and json.loads(reply.body) == first
    reply = app.handle_api(Request("GET", "/v1/events/evt_nope", headers=AUTH))
    assert isinstance(reply, Response) and reply.status == 404
    error = json.loads(reply.body)["error"]
    assert (error["code"], error["message"]) == ("resource_missing", "No such event: 'evt_nope'")
    reply = app.handle_api(Request("GET", "/v1/events", query="limit=1000", headers=AUTH))
    assert isinstance(reply, Response) and reply.status == 400


def test_the_store_stays_bounded() -> None:
    store = EventStore(max_events=3)
    for n in range(5):
        store.record("charge.succeeded", {}, Origin(), created=n)
    assert [e["created"] for e in store.all()] == [2, 3, 4]
