"""Capture, authorisation expiry and refunds against a real stand-in process, through the
official SDK, with the events listed and delivered as signed webhooks to a real endpoint."""

import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import stripe

from stripe_standin import StandinAdmin, StandinProcess
from tests.unit.standin_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk_test_capture_refunds_4242"
SECRET = "whsec_integration_capture_refunds"


@pytest.fixture(scope="module")
def module_standin() -> Iterator[StandinProcess]:
    with StandinProcess(
        quiet=True, webhook_secret=SECRET, webhook_retry_base=0.05, webhook_timeout=2.0
    ) as process:
        yield process


@pytest.fixture
def standin(module_standin: StandinProcess) -> StandinProcess:
    module_standin.admin.reset()
    return module_standin


@pytest.fixture
def admin(standin: StandinProcess) -> StandinAdmin:
    return standin.admin


@pytest.fixture
def hooks(admin: StandinAdmin) -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        admin.configure_webhooks(url=receiver.url)
        yield receiver


@pytest.fixture
def client(standin: StandinProcess) -> Iterator[stripe.StripeClient]:
    http_client = stripe.RequestsClient()
    yield stripe.StripeClient(
        API_KEY,
        base_addresses={"api": standin.url},
        max_network_retries=0,
        http_client=http_client,
    )
    http_client.close()  # type: ignore[no-untyped-call]


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def key() -> stripe.RequestOptions:
    return {"idempotency_key": str(uuid.uuid4())}


def paid(client: stripe.StripeClient, *, manual: bool = False) -> stripe.PaymentIntent:
    params: Any = {"amount": 2500, "currency": "usd", "payment_method_types": ["card"]}
    if manual:
        params["capture_method"] = "manual"
    intent = client.v1.payment_intents.create(params, key())
    return client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"}, key())


def delivered_types(hooks: Receiver, object_ids: set[str]) -> list[str]:
    return [e["type"] for e in hooks.events() if e["data"]["object"]["id"] in object_ids]


def test_full_capture_with_events_delivered(client: stripe.StripeClient, hooks: Receiver) -> None:
    intent = paid(client, manual=True)
    assert (intent.status, intent.amount_capturable, intent.amount_received) == (
        "requires_capture",
        2500,
        0,
    )
    assert intent.latest_charge is not None
    charge_id = str(intent.latest_charge)
    charge = client.v1.charges.retrieve(charge_id)
    assert charge.captured is False
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert card is not None and card.capture_before is not None
    assert card.capture_before > int(time.time()) + 6 * 24 * 3600

    captured = client.v1.payment_intents.capture(intent.id, {}, key())
    assert (captured.status, captured.amount_received, captured.amount_capturable) == (
        "succeeded",
        2500,
        0,
    )
    wanted = ["charge.captured", "payment_intent.succeeded"]
    wait_until(
        lambda: delivered_types(hooks, {intent.id, charge_id})[-2:] == wanted,
        "the capture webhooks",
    )
    assert all(d.signature_ok for d in hooks.deliveries)


def test_partial_capture_and_a_second_capture_refused(client: stripe.StripeClient) -> None:
    intent = paid(client, manual=True)
    captured = client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 1000}, key())
    assert (captured.status, captured.amount_received) == ("succeeded", 1000)
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_captured, charge.amount_refunded, charge.captured) == (1000, 0, True)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.capture(intent.id, {}, key())
    assert refused.value.code == "payment_intent_unexpected_state"


def test_capture_above_the_authorisation_and_idempotent_replay(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    intent = paid(client, manual=True)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 2501}, key())
    assert too_much.value.code == "amount_too_large"
    same = key()
    first = client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 900}, same)
    again = client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 900}, same)
    assert again.amount_received == first.amount_received == 900
    assert [e["type"] for e in admin.events()].count("charge.captured") == 1


def test_an_expired_authorisation_is_canceled_by_the_sweeper(
    client: stripe.StripeClient, admin: StandinAdmin, hooks: Receiver
) -> None:
    admin.set_authorization_window(0.5)
    intent = paid(client, manual=True)
    charge_id = str(intent.latest_charge)
    # No request asks: the sweeper expires it and the webhooks go out.
    wait_until(
        lambda: (
            delivered_types(hooks, {intent.id, charge_id})[-2:]
            == ["charge.expired", "payment_intent.canceled"]
        ),
        "the expiry webhooks",
    )
    canceled = client.v1.payment_intents.retrieve(intent.id)
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "automatic")
    assert admin.stats()["authorizations_expired"] == 1


def test_expire_one_now_through_the_control_api(
    client: stripe.StripeClient, admin: StandinAdmin
) -> None:
    assert admin.authorization_window() == 7 * 24 * 3600
    intent = paid(client, manual=True)
    expired = admin.expire_authorization(intent.id)
    assert (expired["status"], expired["cancellation_reason"]) == ("canceled", "automatic")
    with pytest.raises(stripe.InvalidRequestError):
        client.v1.payment_intents.capture(intent.id, {}, key())


def test_refund_partial_full_over_and_list(client: stripe.StripeClient, hooks: Receiver) -> None:
    intent = paid(client)
    part = client.v1.refunds.create(
        {"payment_intent": intent.id, "amount": 1000, "reason": "requested_by_customer"}, key()
    )
    assert (part.status, part.amount, part.charge) == ("succeeded", 1000, intent.latest_charge)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 1501}, key())
    assert too_much.value.code == "amount_too_large"
    rest = client.v1.refunds.create({"charge": str(intent.latest_charge)}, key())
    assert rest.amount == 1500
    with pytest.raises(stripe.InvalidRequestError) as done:
        client.v1.refunds.create({"payment_intent": intent.id}, key())
    assert done.value.code == "charge_already_refunded"
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_refunded, charge.refunded) == (2500, True)
    listed = client.v1.refunds.list({"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, part.id]
    assert listed.has_more is False
    assert client.v1.refunds.retrieve(part.id).amount == 1000
    wait_until(
        lambda: (
            [t for t in delivered_types(hooks, {part.id, rest.id, charge.id})].count(
                "charge.refunded"
            )
            == 2
        ),
        "two charge.refunded webhooks",
    )
    assert delivered_types(hooks, {part.id, rest.id}) == ["refund.created", "refund.created"]


def test_idempotent_refund_replay(client: stripe.StripeClient, admin: StandinAdmin) -> None:
    intent = paid(client)
    same = key()
    first = client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}, same)
    again = client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}, same)
    assert again.id == first.id
    assert len(admin.refunds()) == 1


def test_pending_refunds_settle_succeeded_or_failed(
    client: stripe.StripeClient, admin: StandinAdmin, hooks: Receiver
) -> None:
    assert admin.set_refunds_pending(True) is True
    intent = paid(client)
    ok = client.v1.refunds.create({"payment_intent": intent.id, "amount": 1000}, key())
    bad = client.v1.refunds.create({"payment_intent": intent.id, "amount": 500}, key())
    assert (ok.status, bad.status) == ("pending", "pending")
    assert admin.settle_refund(ok.id, succeed=True)["status"] == "succeeded"
    failed = admin.settle_refund(bad.id, succeed=False, failure_reason="expired_or_canceled_card")
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert client.v1.refunds.retrieve(bad.id).status == "failed"
    charge = client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_refunded, charge.refunded) == (1000, False)
    wait_until(
        lambda: (
            delivered_types(hooks, {bad.id})
            == ["refund.created", "refund.updated", "refund.failed"]
        ),
        "the failed refund's webhooks",
    )
    assert delivered_types(hooks, {ok.id}) == ["refund.created", "refund.updated"]
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 1501}, key())
    assert too_much.value.code == "amount_too_large"


def test_the_start_up_flags() -> None:
    with StandinProcess(quiet=True, refunds_pending=True, authorization_window=90) as process:
        assert process.admin.refunds_pending() is True
        assert process.admin.authorization_window() == 90
        assert "authorization window 90s; refunds stay pending" in process.log_text()
        process.admin.set_refunds_pending(False)
        process.admin.reset()  # back to the start-up settings
        assert process.admin.refunds_pending() is True


def test_faults_apply_to_refunds(client: stripe.StripeClient, admin: StandinAdmin) -> None:
    intent = paid(client)
    admin.configure(fail_429=1.0)
    with pytest.raises(stripe.RateLimitError):
        client.v1.refunds.create({"payment_intent": intent.id}, key())
    admin.configure(fail_429=0.0, lose_response=1.0)
    with pytest.raises(stripe.APIConnectionError):
        client.v1.refunds.create({"payment_intent": intent.id, "amount": 100}, key())
    admin.configure(lose_response=0.0)
    assert [r["amount"] for r in admin.refunds()] == [100]  # done, the answer lost


def cli(standin: StandinProcess, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_API_KEY", "STRIPE_API_BASE")}
    env.update(PYTHONPATH=str(ROOT), STRIPE_API_KEY=API_KEY)
    done = subprocess.run(
        [sys.executable, "-m", "stripe_standin", *args, "--api-base", standin.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr


def test_cli_capture_and_refund_as_a_dashboard_user(
    standin: StandinProcess, client: stripe.StripeClient
) -> None:
    intent = paid(client, manual=True)
    status, out, err = cli(standin, "capture", intent.id, "--amount", "2000")
    assert (status, err) == (0, "")
    assert out.startswith(f"{intent.id} succeeded amount=2000 usd")
    status, out, err = cli(standin, "refund", intent.id, "--amount", "500", "--reason", "duplicate")
    assert (status, err) == (0, "")
    assert out.startswith("re_") and " succeeded amount=500 usd" in out
    status, out, err = cli(standin, "refund", intent.id)
    assert status == 0 and " amount=1500 " in out
    status, out, err = cli(standin, "refund", intent.id)
    assert (status, out) == (2, "")
    assert "charge_already_refunded" in err
    assert API_KEY not in err
    status, _, err = cli(standin, "capture", intent.id)
    assert status == 2 and "payment_intent_unexpected_state" in err


def test_the_sdk_expands_latest_charge_on_every_intent_answer(
    client: stripe.StripeClient,
) -> None:
    expand: Any = {"expand": ["latest_charge"]}
    created = client.v1.payment_intents.create(
        {"amount": 2500, "currency": "usd", "capture_method": "manual", **expand}, key()
    )
    assert created.latest_charge is None
    confirmed = client.v1.payment_intents.confirm(
        created.id, {"payment_method": "pm_card_visa", **expand}, key()
    )
    charge = confirmed.latest_charge
    assert isinstance(charge, stripe.Charge)
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert card is not None and card.capture_before is not None
    retrieved = client.v1.payment_intents.retrieve(created.id, expand)
    assert isinstance(retrieved.latest_charge, stripe.Charge)
    assert retrieved.latest_charge.id == charge.id
    captured = client.v1.payment_intents.capture(
        created.id, {"amount_to_capture": 1000, **expand}, key()
    )
    assert isinstance(captured.latest_charge, stripe.Charge)
    assert captured.latest_charge.amount_captured == 1000
    other = paid(client, manual=True)
    canceled = client.v1.payment_intents.cancel(other.id, expand, key())
    assert isinstance(canceled.latest_charge, stripe.Charge)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        client.v1.payment_intents.retrieve(
            created.id, {"expand": ["latest_charge.balance_transaction"]}
        )
    assert refused.value.user_message == (
        "This property cannot be expanded (latest_charge.balance_transaction)."
    )


def test_refund_metadata_round_trips_through_the_sdk(client: stripe.StripeClient) -> None:
    intent, other = paid(client), paid(client)
    made = client.v1.refunds.create(
        {"payment_intent": intent.id, "amount": 100, "metadata": {"refund_id": "r-1"}}, key()
    )
    client.v1.refunds.create({"payment_intent": other.id, "amount": 100}, key())
    listed = client.v1.refunds.list({"payment_intent": intent.id})
    assert [(r.id, r.metadata.to_dict()) for r in listed.data] == [(made.id, {"refund_id": "r-1"})]
