"""The rest of the payment flow against a real stand-in process, through the official SDK:
confirm, cancel, events, signed webhooks to a real endpoint, runtime webhook faults, and the
customer subcommands (pay, 3ds, settle) run as processes. The module's stand-in, receiver
and SDK: tests/integration/standin_flows.py."""

import uuid
from pathlib import Path
from typing import Any

import pytest
import stripe

from stripe_standin import StandinAdmin, StandinProcess, StandinStartError
from tests.integration.standin_flows import SECRET, cli, sdk_client, wait_until
from tests.unit.standin_receiver import Receiver


def create(client: stripe.StripeClient, payment_id: str, **extra: Any) -> stripe.PaymentIntent:
    params: Any = {
        "amount": 2500,
        "currency": "usd",
        "metadata": {"payment_id": payment_id},
        **extra,
    }
    return client.v1.payment_intents.create(params, {"idempotency_key": str(uuid.uuid4())})


def test_confirm_makes_events_that_are_listed_and_delivered_signed(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin, hooks: Receiver
) -> None:
    intent = create(hooked_client, "flow-1")
    paid = hooked_client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"})
    assert (paid.status, paid.amount_received) == ("succeeded", 2500)
    assert paid.latest_charge is not None and str(paid.latest_charge).startswith("ch_")

    listed = hooked_client.v1.events.list({"limit": 10})
    assert [e.type for e in listed.data] == [
        "payment_intent.succeeded",
        "charge.succeeded",
        "payment_intent.created",
    ]
    assert listed.has_more is False
    only = hooked_client.v1.events.list({"type": "payment_intent.*"}).data
    assert [e.type for e in only] == ["payment_intent.succeeded", "payment_intent.created"]
    newest = hooked_client.v1.events.retrieve(listed.data[0].id)
    assert newest.data.object["id"] == intent.id
    assert newest.data.object["status"] == "succeeded"
    assert newest.request is not None and newest.request.id is not None

    hooks.wait_for(3)
    assert sorted(e["id"] for e in hooks.events()) == sorted(e.id for e in listed.data)
    # Acknowledged deliveries: nothing is pending any more.
    wait_until(
        lambda: all(
            hooked_client.v1.events.retrieve(e.id).pending_webhooks == 0 for e in listed.data
        ),
        "pending_webhooks to drop to 0",
    )
    assert hooked_admin.webhook_stats()["successes"] == 3


def test_a_decline_is_a_card_error_and_a_payment_failed_webhook(
    hooked_client: stripe.StripeClient, hooks: Receiver
) -> None:
    intent = create(hooked_client, "flow-2")
    with pytest.raises(stripe.CardError) as info:
        hooked_client.v1.payment_intents.confirm(
            intent.id, {"payment_method": "pm_card_chargeDeclinedInsufficientFunds"}
        )
    error = info.value
    assert (error.http_status, error.code) == (402, "card_declined")
    assert error.error is not None
    assert error.error.decline_code == "insufficient_funds"
    assert error.error.payment_intent is not None
    assert error.error.payment_intent.status == "requires_payment_method"
    after = hooked_client.v1.payment_intents.retrieve(intent.id)
    assert after.last_payment_error is not None
    assert after.last_payment_error.decline_code == "insufficient_funds"
    hooks.wait_for(3)
    assert sorted(e["type"] for e in hooks.events()) == [
        "charge.failed",
        "payment_intent.created",
        "payment_intent.payment_failed",
    ]


def test_cancel_through_the_sdk(hooked_client: stripe.StripeClient, hooks: Receiver) -> None:
    intent = create(hooked_client, "flow-3")
    canceled = hooked_client.v1.payment_intents.cancel(
        intent.id, {"cancellation_reason": "requested_by_customer"}
    )
    assert (canceled.status, canceled.cancellation_reason) == ("canceled", "requested_by_customer")
    assert canceled.canceled_at is not None
    with pytest.raises(stripe.InvalidRequestError) as info:
        hooked_client.v1.payment_intents.cancel(intent.id)
    assert info.value.code == "payment_intent_unexpected_state"
    hooks.wait_for(2)
    assert {e["type"] for e in hooks.events()} == {
        "payment_intent.created",
        "payment_intent.canceled",
    }


def test_faults_apply_to_confirm(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin
) -> None:
    intent = create(hooked_client, "flow-4")
    hooked_admin.configure(fail_429=1.0)
    with pytest.raises(stripe.RateLimitError):
        hooked_client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"})
    with pytest.raises(stripe.RateLimitError):
        hooked_client.v1.events.list()
    hooked_admin.configure(fail_429=0.0, lose_response=1.0)
    key = {"idempotency_key": f"confirm-{uuid.uuid4()}"}
    with pytest.raises(stripe.APIConnectionError):
        hooked_client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"}, key)
    hooked_admin.configure(lose_response=0.0)
    replay = hooked_client.v1.payment_intents.confirm(
        intent.id, {"payment_method": "pm_card_visa"}, key
    )
    assert replay.status == "succeeded"
    assert replay.last_response is not None
    assert replay.last_response.headers.get("Idempotent-Replayed") == "true"


def test_runtime_webhook_faults(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin, hooks: Receiver
) -> None:
    # phase 1: duplicate, every event arrives twice
    hooked_admin.configure_webhooks(duplicate=1.0)
    create(hooked_client, "flow-5a")
    deliveries = hooks.wait_for(2)
    assert deliveries[0].event["id"] == deliveries[1].event["id"]

    # phase 2: a bad signature first, then the good retry
    hooked_admin.configure_webhooks(duplicate=0.0, bad_signature=1.0)
    create(hooked_client, "flow-5b")
    first, second = hooks.wait_for(4)[2:4]
    assert (first.signature_ok, second.signature_ok) == (False, True)
    assert first.event["id"] == second.event["id"]

    # phase 3: dropped, never sent, still listed for reconciliation
    hooked_admin.configure_webhooks(bad_signature=0.0, drop=1.0)
    dropped = create(hooked_client, "flow-5c")
    wait_until(lambda: hooked_admin.webhook_stats()["drops"] == 1, "the drop")
    listed = hooked_client.v1.events.list({"limit": 1}).data[0]
    assert listed.data.object["id"] == dropped.id
    assert listed.pending_webhooks == 1
    assert listed.id not in {d.event["id"] for d in hooks.deliveries}

    stats = hooked_admin.webhook_stats()
    assert (stats["duplicates"], stats["bad_signatures"], stats["drops"]) == (1, 1, 1)


def test_disabled_webhooks_leave_events_to_the_list(
    hooked_client: stripe.StripeClient, hooked_admin: StandinAdmin, hooks: Receiver
) -> None:
    hooked_admin.configure_webhooks(enabled=False)
    intent = create(hooked_client, "flow-6")
    hooked_client.v1.payment_intents.confirm(intent.id, {"payment_method": "pm_card_visa"})
    events = hooked_client.v1.events.list().data
    assert len(events) == 3
    assert all(e.pending_webhooks == 0 for e in events)
    stats = hooked_admin.webhook_stats()
    assert (stats["not_sent"], stats["events"], stats["attempts"]) == (3, 0, 0)
    assert hooks.deliveries == []


def test_cli_pay_by_payment_id_with_3ds(
    hooked_standin: StandinProcess, hooked_client: stripe.StripeClient, hooks: Receiver
) -> None:
    intent = create(hooked_client, "cli-3ds")
    status, out, err = cli(
        hooked_standin, "pay", "cli-3ds", "--card", "pm_card_authenticationRequired"
    )
    assert (status, err) == (0, "")
    assert out.startswith(f"{intent.id} requires_action ")
    assert out.count("\n") == 1

    status, out, _ = cli(hooked_standin, "3ds", "cli-3ds", "--succeed")
    assert status == 0
    assert out.startswith(f"{intent.id} succeeded amount=2500 usd charge=ch_")
    assert hooked_client.v1.payment_intents.retrieve(intent.id).status == "succeeded"
    hooks.wait_for(4)
    assert "payment_intent.requires_action" in {e["type"] for e in hooks.events()}

    status, _, err = cli(hooked_standin, "3ds", intent.id, "--fail")
    assert status == 2
    assert "status of succeeded" in err


def test_cli_pay_declined_and_3ds_failed(
    hooked_standin: StandinProcess, hooked_client: stripe.StripeClient
) -> None:
    intent = create(hooked_client, "cli-decline")
    status, out, _ = cli(hooked_standin, "pay", intent.id, "--card", "pm_card_chargeDeclined")
    assert status == 1
    assert out == (
        f"{intent.id} requires_payment_method failed: card_declined/generic_decline: "
        "Your card was declined.\n"
    )
    cli(hooked_standin, "pay", intent.id, "--card", "pm_card_threeDSecure2Required")
    status, out, _ = cli(hooked_standin, "3ds", intent.id, "--fail")
    assert status == 0
    assert out.startswith(f"{intent.id} requires_payment_method failed: ")
    assert "payment_intent_authentication_failure" in out


def test_cli_settle_an_ach_debit(
    hooked_standin: StandinProcess, hooked_client: stripe.StripeClient
) -> None:
    intent = create(hooked_client, "cli-ach", payment_method_types=["us_bank_account"])
    status, out, _ = cli(hooked_standin, "pay", "cli-ach", "--card", "pm_usBankAccount_success")
    assert (status, out.split()[:2]) == (0, [intent.id, "processing"])
    status, out, _ = cli(hooked_standin, "settle", "cli-ach", "--succeed")
    assert (status, out.split()[:2]) == (0, [intent.id, "succeeded"])

    failing = create(hooked_client, "cli-ach-2", payment_method_types=["us_bank_account"])
    cli(hooked_standin, "pay", failing.id, "--card", "pm_usBankAccount_insufficientFunds")
    status, out, _ = cli(hooked_standin, "settle", failing.id, "--fail")
    assert status == 0
    assert out.startswith(f"{failing.id} requires_payment_method failed: insufficient_funds")


def test_cli_refusals(hooked_standin: StandinProcess) -> None:
    status, _, err = cli(hooked_standin, "pay", "no-such-payment")
    assert status == 2
    assert "no PaymentIntent has metadata payment_id 'no-such-payment'" in err
    status, _, err = cli(hooked_standin, "pay", "pi_x", api_key=None)
    assert (status, err) == (2, "pay: set STRIPE_API_KEY to the API key\n")
    status, _, err = cli(hooked_standin, "settle", "pi_nope", "--succeed")
    assert status == 2
    assert "No such payment_intent: 'pi_nope'" in err
    status, _, err = cli(hooked_standin, "3ds", "pi_x")
    assert status == 2
    assert "one of the arguments --succeed --fail is required" in err


def test_webhooks_from_start_up_flags_and_the_secret_stays_off_argv(tmp_path: Path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("whsec_from_a_file\n")
    with (
        Receiver("whsec_from_a_file") as receiver,
        StandinProcess(
            extra_args=["--webhook-url", receiver.url, "--webhook-secret-file", str(secret_file)]
        ) as standin,
    ):
        with sdk_client(standin.url) as client:
            create(client, "flags-1")
        (delivery,) = receiver.wait_for(1)
        assert delivery.signature_ok
        shown = standin.admin.webhooks()
        assert (shown["url"], shown["secret_set"]) == (receiver.url, True)
        log = standin.log_text()
        assert "whsec_from_a_file" not in log
        assert "signing secret set" in log

    with (
        Receiver(SECRET) as receiver,
        StandinProcess(webhook_url=receiver.url, webhook_secret=SECRET) as standin,
    ):
        assert standin.pid is not None
        cmdline = Path(f"/proc/{standin.pid}/cmdline").read_bytes()
        assert SECRET.encode() not in cmdline
        assert SECRET not in standin.log_text()
        assert SECRET not in repr(standin.admin.webhooks())


def test_a_webhook_url_without_a_secret_fails_fast() -> None:
    with pytest.raises(StandinStartError) as info:
        StandinProcess(webhook_url="http://127.0.0.1:9/hook").start()
    assert "needs a signing secret" in str(info.value)
    assert "STANDIN_WEBHOOK_SECRET" in str(info.value)
