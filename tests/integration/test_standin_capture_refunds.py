"""Capture, authorisation expiry and refunds against a real stand-in process, through the
official SDK, with the events listed and delivered as signed webhooks to a real endpoint.
The module's stand-in, receiver and SDK: tests/integration/standin_flows.py."""

import time
import uuid
from typing import Any

import pytest
import stripe

from stripe_standin import StandinAdmin, StandinProcess
from tests.integration.standin_flows import API_KEY, cli, wait_until
from tests.unit.standin_receiver import Receiver


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


def test_full_capture_with_events_delivered(
    hooked_client: stripe.StripeClient, hooks: Receiver
) -> None:
    intent = paid(hooked_client, manual=True)
    assert (intent.status, intent.amount_capturable, intent.amount_received) == (
        "requires_capture",
        2500,
        0,
    )
    assert intent.latest_charge is not None
    charge_id = str(intent.latest_charge)
    charge = hooked_client.v1.charges.retrieve(charge_id)
    assert charge.captured is False
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert card is not None and card.capture_before is not None
    assert card.capture_before > int(time.time()) + 6 * 24 * 3600

    captured = hooked_client.v1.payment_intents.capture(intent.id, {}, key())
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


def test_partial_capture_and_a_second_capture_refused(hooked_client: stripe.StripeClient) -> None:
    intent = paid(hooked_client, manual=True)
    captured = hooked_client.v1.payment_intents.capture(
        intent.id, {"amount_to_capture": 1000}, key()
    )
    assert (captured.status, captured.amount_received) == ("succeeded", 1000)
    charge = hooked_client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_captured, charge.amount_refunded, charge.captured) == (1000, 0, True)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        hooked_client.v1.payment_intents.capture(intent.id, {}, key())
    assert refused.value.code == "payment_intent_unexpected_state"


def test_capture_above_the_authorisation_and_idempotent_replay(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin
) -> None:
    intent = paid(hooked_client, manual=True)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        hooked_client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 2501}, key())
    assert too_much.value.code == "amount_too_large"
    same = key()
    first = hooked_client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 900}, same)
    again = hooked_client.v1.payment_intents.capture(intent.id, {"amount_to_capture": 900}, same)
    assert again.amount_received == first.amount_received == 900
    assert [e["type"] for e in hooked_admin.events()].count("charge.captured") == 1


def test_an_expired_authorisation_is_canceled_by_the_sweeper(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin, hooks: Receiver
) -> None:
    hooked_admin.set_authorization_window(0.5)
    intent = paid(hooked_client, manual=True)
    charge_id = str(intent.latest_charge)
    # No request asks: the sweeper expires it and the webhooks go out.
    wait_until(
        lambda: (
            delivered_types(hooks, {intent.id, charge_id})[-2:]
            == ["charge.expired", "payment_intent.canceled"]
        ),
        "the expiry webhooks",
    )
    canceled = hooked_client.v1.payment_intents.retrieve(intent.id)
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "automatic")
    assert hooked_admin.stats()["authorizations_expired"] == 1


def test_expire_one_now_through_the_control_api(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin
) -> None:
    assert hooked_admin.authorization_window() == 7 * 24 * 3600
    intent = paid(hooked_client, manual=True)
    expired = hooked_admin.expire_authorization(intent.id)
    assert (expired["status"], expired["cancellation_reason"]) == ("canceled", "automatic")
    with pytest.raises(stripe.InvalidRequestError):
        hooked_client.v1.payment_intents.capture(intent.id, {}, key())


def test_refund_partial_full_over_and_list(
    hooked_client: stripe.StripeClient, hooks: Receiver
) -> None:
    intent = paid(hooked_client)
    part = hooked_client.v1.refunds.create(
        {"payment_intent": intent.id, "amount": 1000, "reason": "requested_by_customer"}, key()
    )
    assert (part.status, part.amount, part.charge) == ("succeeded", 1000, intent.latest_charge)
    with pytest.raises(stripe.InvalidRequestError) as too_much:
        hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 1501}, key())
    assert too_much.value.code == "amount_too_large"
    rest = hooked_client.v1.refunds.create({"charge": str(intent.latest_charge)}, key())
    assert rest.amount == 1500
    with pytest.raises(stripe.InvalidRequestError) as done:
        hooked_client.v1.refunds.create({"payment_intent": intent.id}, key())
    assert done.value.code == "charge_already_refunded"
    charge = hooked_client.v1.charges.retrieve(str(intent.latest_charge))
    assert (charge.amount_refunded, charge.refunded) == (2500, True)
    listed = hooked_client.v1.refunds.list({"payment_intent": intent.id})
    assert [r.id for r in listed.data] == [rest.id, part.id]
    assert listed.has_more is False
    assert hooked_client.v1.refunds.retrieve(part.id).amount == 1000
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


def test_idempotent_refund_replay(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin
) -> None:
    intent = paid(hooked_client)
    same = key()
    first = hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}, same)
    again = hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 300}, same)
    assert again.id == first.id
    assert len(hooked_admin.refunds()) == 1


def test_pending_refunds_settle_succeeded_or_failed(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin, hooks: Receiver
) -> None:
    assert hooked_admin.set_refunds_pending(True) is True
    intent = paid(hooked_client)
    ok = hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 1000}, key())
    bad = hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 500}, key())
    assert (ok.status, bad.status) == ("pending", "pending")
    assert hooked_admin.settle_refund(ok.id, succeed=True)["status"] == "succeeded"
    failed = hooked_admin.settle_refund(
        bad.id, succeed=False, failure_reason="expired_or_canceled_card"
    )
    assert (failed["status"], failed["failure_reason"]) == ("failed", "expired_or_canceled_card")
    assert hooked_client.v1.refunds.retrieve(bad.id).status == "failed"
    charge = hooked_client.v1.charges.retrieve(str(intent.latest_charge))
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
        hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 1501}, key())
    assert too_much.value.code == "amount_too_large"


def test_the_start_up_flags() -> None:
    with StandinProcess(quiet=True, refunds_pending=True, authorization_window=90) as process:
        assert process.admin.refunds_pending() is True
        assert process.admin.authorization_window() == 90
        assert "authorization window 90s; refunds stay pending" in process.log_text()
        process.admin.set_refunds_pending(False)
        process.admin.reset()  # back to the start-up settings
        assert process.admin.refunds_pending() is True


def test_faults_apply_to_refunds(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin
) -> None:
    intent = paid(hooked_client)
    hooked_admin.configure(fail_429=1.0)
    with pytest.raises(stripe.RateLimitError):
        hooked_client.v1.refunds.create({"payment_intent": intent.id}, key())
    hooked_admin.configure(fail_429=0.0, lose_response=1.0)
    with pytest.raises(stripe.APIConnectionError):
        hooked_client.v1.refunds.create({"payment_intent": intent.id, "amount": 100}, key())
    hooked_admin.configure(lose_response=0.0)
    assert [r["amount"] for r in hooked_admin.refunds()] == [100]  # done, the answer lost


def test_cli_capture_and_refund_as_a_dashboard_user(
    hooked_standin: StandinProcess, hooked_client: stripe.StripeClient
) -> None:
    intent = paid(hooked_client, manual=True)
    status, out, err = cli(hooked_standin, "capture", intent.id, "--amount", "2000")
    assert (status, err) == (0, "")
    assert out.startswith(f"{intent.id} succeeded amount=2000 usd")
    status, out, err = cli(
        hooked_standin, "refund", intent.id, "--amount", "500", "--reason", "duplicate"
    )
    assert (status, err) == (0, "")
    assert out.startswith("re_") and " succeeded amount=500 usd" in out
    status, out, err = cli(hooked_standin, "refund", intent.id)
    assert status == 0 and " amount=1500 " in out
    status, out, err = cli(hooked_standin, "refund", intent.id)
    assert (status, out) == (2, "")
    assert "charge_already_refunded" in err
    assert API_KEY not in err
    status, _, err = cli(hooked_standin, "capture", intent.id)
    assert status == 2 and "payment_intent_unexpected_state" in err


def test_the_sdk_expands_latest_charge_on_every_intent_answer(
    hooked_client: stripe.StripeClient,
) -> None:
    expand: Any = {"expand": ["latest_charge"]}
    created = hooked_client.v1.payment_intents.create(
        {"amount": 2500, "currency": "usd", "capture_method": "manual", **expand}, key()
    )
    assert created.latest_charge is None
    confirmed = hooked_client.v1.payment_intents.confirm(
        created.id, {"payment_method": "pm_card_visa", **expand}, key()
    )
    charge = confirmed.latest_charge
    assert isinstance(charge, stripe.Charge)
    card = charge.payment_method_details.card  # type: ignore[union-attr]
    assert card is not None and card.capture_before is not None
    retrieved = hooked_client.v1.payment_intents.retrieve(created.id, expand)
    assert isinstance(retrieved.latest_charge, stripe.Charge)
    assert retrieved.latest_charge.id == charge.id
    captured = hooked_client.v1.payment_intents.capture(
        created.id, {"amount_to_capture": 1000, **expand}, key()
    )
    assert isinstance(captured.latest_charge, stripe.Charge)
    assert captured.latest_charge.amount_captured == 1000
    other = paid(hooked_client, manual=True)
    canceled = hooked_client.v1.payment_intents.cancel(other.id, expand, key())
    assert isinstance(canceled.latest_charge, stripe.Charge)
    with pytest.raises(stripe.InvalidRequestError) as refused:
        hooked_client.v1.payment_intents.retrieve(
            created.id, {"expand": ["latest_charge.balance_transaction"]}
        )
    assert refused.value.user_message == (
        "This property cannot be expanded (latest_charge.balance_transaction)."
    )


def test_refund_metadata_round_trips_through_the_sdk(hooked_client: stripe.StripeClient) -> None:
    intent, other = paid(hooked_client), paid(hooked_client)
    made = hooked_client.v1.refunds.create(
        {"payment_intent": intent.id, "amount": 100, "metadata": {"refund_id": "r-1"}}, key()
    )
    hooked_client.v1.refunds.create({"payment_intent": other.id, "amount": 100}, key())
    listed = hooked_client.v1.refunds.list({"payment_intent": intent.id})
    assert [(r.id, r.metadata.to_dict()) for r in listed.data] == [(made.id, {"refund_id": "r-1"})]
