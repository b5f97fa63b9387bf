"""The Stripe stand-in over real HTTP, driven by the official stripe SDK (never mocked)."""

import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import pytest
import stripe
from stripe.params import PaymentIntentCreateParams

from stripe_standin import StandinAdmin, StandinProcess
from stripe_standin.client import card_declined, create_then_5xx, lose_response

API_KEY = "sk_test_integration4242"
PARAMS: PaymentIntentCreateParams = {
    "amount": 2599,
    "currency": "usd",
    "description": "Order 42",
    "metadata": {"payment_id": "42"},
}


# `standin` (tests/conftest.py): the session's stand-in process, reset before each test.


@pytest.fixture
def admin(standin: StandinProcess) -> StandinAdmin:
    return standin.admin


@pytest.fixture
def client(standin: StandinProcess, admin: StandinAdmin) -> Iterator[stripe.StripeClient]:
    http_client = stripe.RequestsClient()
    yield stripe.StripeClient(
        API_KEY,
        base_addresses={"api": standin.url},
        max_network_retries=0,
        http_client=http_client,
    )
    http_client.close()  # type: ignore[no-untyped-call]


def _create(client: stripe.StripeClient, key: str, **changes: Any) -> stripe.PaymentIntent:
    params = cast(PaymentIntentCreateParams, {**PARAMS, **changes})
    return client.v1.payment_intents.create(params, {"idempotency_key": key})


def _key() -> str:
    return f"payment-42-{uuid.uuid4()}"


def test_create_then_retrieve(client: stripe.StripeClient) -> None:
    created = _create(client, _key())
    assert created.id.startswith("pi_") and len(created.id) == 27
    assert created.object == "payment_intent"
    assert (created.amount, created.currency, created.description) == (2599, "usd", "Order 42")
    assert created.metadata.to_dict() == {"payment_id": "42"}
    assert created.status == "requires_payment_method"
    assert created.amount_received == 0
    assert created.client_secret is not None
    assert created.client_secret.startswith(f"{created.id}_secret_")
    assert created.livemode is False
    assert created.last_response is not None
    assert str(created.last_response.request_id).startswith("req_")

    fetched = client.v1.payment_intents.retrieve(created.id)
    assert fetched.to_dict() == created.to_dict()


def test_unknown_intent_is_resource_missing(client: stripe.StripeClient) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        client.v1.payment_intents.retrieve("pi_doesnotexist")
    assert (info.value.http_status, info.value.code, info.value.param) == (
        404,
        "resource_missing",
        "intent",
    )
    assert info.value.user_message == "No such payment_intent: 'pi_doesnotexist'"


def test_bad_amount_is_an_invalid_request(client: stripe.StripeClient, admin: StandinAdmin) -> None:
    with pytest.raises(stripe.InvalidRequestError) as info:
        _create(client, _key(), amount=49)
    error = info.value
    assert (error.http_status, error.code, error.param) == (400, "amount_too_small", "amount")
    assert error.user_message == "Amount must be at least $0.50 usd"
    assert error.request_id is not None and error.request_id.startswith("req_")
    assert error.error is not None
    assert error.error.doc_url == "https://stripe.com/docs/error-codes/amount-too-small"
    assert admin.payment_intents() == []


def test_bad_key_is_an_authentication_error(standin: StandinProcess, admin: StandinAdmin) -> None:
    bad = stripe.StripeClient(
        "sk_live_wrongkey123456789",
        base_addresses={"api": standin.url},
        max_network_retries=0,
        http_client=stripe.RequestsClient(),
    )
    with pytest.raises(stripe.AuthenticationError) as info:
        bad.v1.payment_intents.create(PARAMS)
    assert info.value.http_status == 401
    assert info.value.user_message == "Invalid API Key provided: sk_live_*************6789"
    assert admin.stats()["authentication_failures"] == 1
    assert admin.payment_intents() == []


def test_scripted_card_error_is_not_stored_against_the_key(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    admin.script([card_declined("insufficient_funds")])
    key = _key()
    with pytest.raises(stripe.CardError) as info:
        _create(client, key)
    assert (info.value.http_status, info.value.code) == (402, "card_declined")
    assert info.value.user_message == "Your card was declined."
    assert info.value.error is not None
    assert info.value.error.decline_code == "insufficient_funds"
    assert admin.payment_intents() == []

    created = _create(client, key)  # same key: runs afresh, nothing was saved
    assert [e["payment_intent"]["id"] for e in admin.payment_intents()] == [created.id]


@pytest.mark.parametrize(
    ("setting", "exception", "status"),
    [("fail_429", stripe.RateLimitError, 429), ("fail_5xx", stripe.APIError, 500)],
)
def test_injected_errors_raise_the_sdk_exception_and_a_retry_succeeds(
    client: stripe.StripeClient,
    admin: StandinAdmin,
    setting: str,
    exception: type[stripe.StripeError],
    status: int,
) -> None:
    """A 429 never began executing; a 5xx is released only with save_5xx off."""
    admin.configure(**{setting: 1.0, "save_5xx": False})
    key = _key()
    with pytest.raises(exception) as info:
        _create(client, key)
    assert info.value.http_status == status
    assert admin.payment_intents() == []

    admin.configure(**{setting: 0.0})
    created = _create(client, key)
    assert [e["idempotency_key"] for e in admin.payment_intents()] == [key]
    assert created.last_response is not None
    assert "Idempotent-Replayed" not in created.last_response.headers
    assert admin.stats()["faults"][setting] == 1


def test_replay_returns_the_same_intent_and_creates_one(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    key = _key()
    first = _create(client, key)
    second = _create(client, key)
    assert (second.id, second.client_secret) == (first.id, first.client_secret)
    assert second.last_response is not None
    assert second.last_response.headers["Idempotent-Replayed"] == "true"
    intents = admin.intents_with_metadata("payment_id", "42")
    assert [intent["id"] for intent in intents] == [first.id]
    assert admin.stats()["idempotent_replays"] == 1


def test_same_key_other_parameters_is_an_idempotency_error(client: stripe.StripeClient) -> None:
    key = _key()
    _create(client, key)
    with pytest.raises(stripe.IdempotencyError) as info:
        _create(client, key, amount=2600)
    assert info.value.http_status == 400
    assert info.value.user_message is not None
    assert info.value.user_message.startswith(
        "Keys for idempotent requests can only be used with the same parameters"
    )


def test_lost_response_then_retry_with_the_same_key_gives_one_intent(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    admin.configure(lose_response=1.0)
    key = _key()
    with pytest.raises(stripe.APIConnectionError):
        _create(client, key)
    assert len(admin.payment_intents()) == 1  # created although the client never heard

    admin.configure(lose_response=0.0)
    retried = _create(client, key)
    entries = admin.payment_intents()
    assert [(e["payment_intent"]["id"], e["idempotency_key"]) for e in entries] == [
        (retried.id, key)
    ]
    stats = admin.stats()
    assert stats["faults"]["lose_response"] == 1
    assert stats["idempotent_replays"] == 1


def test_sdk_retries_reuse_its_key_so_a_lost_response_still_gives_one_intent(
    standin: StandinProcess, admin: StandinAdmin
) -> None:
    admin.script([lose_response()])
    retrying = stripe.StripeClient(
        API_KEY,
        base_addresses={"api": standin.url},
        max_network_retries=1,
        http_client=stripe.RequestsClient(),
    )
    created = retrying.v1.payment_intents.create(PARAMS)  # SDK-generated idempotency key
    assert [e["payment_intent"]["id"] for e in admin.payment_intents()] == [created.id]
    assert admin.stats()["requests"]["by_route"]["POST /v1/payment_intents"] == 2


def test_drop_raises_api_connection_error_and_creates_nothing(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    admin.configure(drop=1.0)
    with pytest.raises(stripe.APIConnectionError):
        _create(client, _key())
    admin.configure(drop=0.0)
    assert admin.payment_intents() == []
    stats = admin.stats()
    assert stats["faults"]["drop"] == 1
    assert stats["responses"] == {"no_response": 1}


def test_latency_is_measurable(client: stripe.StripeClient, admin: StandinAdmin) -> None:
    created = _create(client, _key())
    admin.configure(latency_ms=200)
    started = time.monotonic()
    client.v1.payment_intents.retrieve(created.id)
    elapsed = time.monotonic() - started
    assert 0.2 <= elapsed < 1.5


def test_fifty_requests_in_flight_at_once(client: stripe.StripeClient, admin: StandinAdmin) -> None:
    admin.configure(latency_ms=300)
    keys = [_key() for _ in range(50)]
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=50) as pool:
        ids = list(pool.map(lambda k: _create(client, k, metadata={"payment_id": k}).id, keys))
    elapsed = time.monotonic() - started
    assert elapsed < 3.0  # one after the other would take 15 s
    assert len(set(ids)) == 50
    assert sorted(e["idempotency_key"] for e in admin.payment_intents()) == sorted(keys)


def test_duplicate_while_the_first_is_in_flight_gets_409(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    admin.configure(latency_ms=400)
    key = _key()
    results: dict[str, stripe.PaymentIntent] = {}
    first = threading.Thread(target=lambda: results.setdefault("first", _create(client, key)))
    first.start()
    deadline = time.monotonic() + 2
    while admin.stats()["idempotency_keys_in_flight"] == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    with pytest.raises(stripe.APIError) as info:  # the SDK maps 409 to APIError
        _create(client, key)
    first.join()
    assert info.value.http_status == 409
    assert info.value.error is not None
    assert (info.value.error.type, info.value.error.code) == (
        "idempotency_error",
        "idempotency_key_in_use",
    )
    admin.configure(latency_ms=0)
    assert _create(client, key).id == results["first"].id
    assert len(admin.payment_intents()) == 1
    assert admin.stats()["idempotency_conflicts"] == 1


def test_stats_and_payment_intents_reflect_what_happened(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    key = _key()
    created = _create(client, key)
    _create(client, key)
    client.v1.payment_intents.retrieve(created.id)
    with pytest.raises(stripe.InvalidRequestError):
        _create(client, _key(), currency="xyz")

    stats = admin.stats()
    assert stats["requests"] == {
        "total": 4,
        "by_route": {
            "POST /v1/payment_intents": 3,
            "GET /v1/payment_intents/:id": 1,
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
            "other": 0,
        },
    }
    assert stats["responses"] == {"200": 3, "400": 1}
    assert (stats["payment_intents_created"], stats["idempotent_replays"]) == (1, 1)
    assert stats["faults"] == {
        "drop": 0,
        "fail_5xx": 0,
        "fail_429": 0,
        "lose_response": 0,
        "create_then_5xx": 0,
        "scripted": 0,
    }
    (entry,) = admin.payment_intents()
    assert entry["idempotency_key"] == key
    assert entry["payment_intent"] == created.to_dict()


def test_a_saved_500_is_replayed_to_the_sdk_with_its_header_while_the_intent_exists(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    """Stripe's rule through the real SDK: the 500 of a create that began executing is
    what every retry with the key gets, though the intent was made; search finds it."""
    admin.script([create_then_5xx()])
    key = _key()
    answers = []
    for _ in range(3):
        with pytest.raises(stripe.APIError) as info:
            _create(client, key)
        answers.append(info.value)
    assert [a.http_status for a in answers] == [500, 500, 500]
    assert [(a.headers or {}).get("idempotent-replayed") for a in answers] == [
        None,
        "true",
        "true",
    ]
    (entry,) = admin.payment_intents()
    found = client.v1.payment_intents.search({"query": "metadata['payment_id']:'42'"})
    assert [i.id for i in found.data] == [entry["payment_intent"]["id"]]
    assert found.data[0].client_secret == entry["payment_intent"]["client_secret"]
    assert [k["status"] for k in admin.idempotency_keys() if k["key"] == key] == [500]
    outcomes = [(r["idempotency_key"], r["outcome"], r["status"]) for r in admin.requests("42")]
    assert outcomes == [
        (key, "created", 500),
        (key, "replay", 500),
        (key, "replay", 500),
        (None, "ok", 200),
    ]


def test_an_expired_key_makes_a_second_intent_through_the_sdk(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    """What the worker must never let happen by itself: a forgotten key creates anew."""
    key = _key()
    first = _create(client, key)
    assert admin.expire_keys(key=key) == 1
    second = _create(client, key)
    assert second.id != first.id
    assert admin.expire_keys(older_than_seconds=0) == 1
    assert [e["payment_intent"]["id"] for e in admin.payment_intents()] == [first.id, second.id]
