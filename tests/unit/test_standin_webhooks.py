"""Webhook delivery against a real HTTP endpoint: Stripe's signature (checked by the real
SDK), retries with exponential backoff, giving up, and each fault. The deliverer runs on a
fake monotonic clock and tests call ``run_once()``, so "not yet due" is a fact, not a wait."""

import time
from collections.abc import Iterator
from typing import Any

import pytest
import stripe

from stripe_standin.faults import ConfigError
from stripe_standin.webhooks import USER_AGENT, WebhookDeliverer, WebhookSettings, sign
from tests.unit.standin_receiver import Receiver

SECRET = "whsec_unit_test_secret"


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def hooks() -> Iterator[Receiver]:
    with Receiver(SECRET) as receiver:
        yield receiver


def event(n: int = 1, kind: str = "payment_intent.succeeded") -> dict[str, Any]:
    return {"id": f"evt_{n:04d}", "object": "event", "type": kind, "data": {"object": {}}}


def deliverer(
    url: str | None, clock: Clock, delivered: list[str] | None = None, **settings: Any
) -> WebhookDeliverer:
    record = delivered.append if delivered is not None else None
    return WebhookDeliverer(
        WebhookSettings(url=url, **settings), SECRET, seed=3, clock=clock, on_delivered=record
    )


def stats(d: WebhookDeliverer) -> dict[str, int]:
    result: dict[str, int] = d.snapshot()["stats"]
    return result


def test_the_signature_is_stripes_scheme() -> None:
    payload = b'{"id": "evt_1", "object": "event", "type": "charge.succeeded"}'
    now = int(time.time())
    header = sign(payload, SECRET, now)
    assert header.startswith(f"t={now},v1=")
    verified = stripe.Webhook.construct_event(payload.decode(), header, SECRET)
    assert verified.id == "evt_1"
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.decode(), header, "whsec_other")
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.decode() + " ", header, SECRET)
    stale = sign(payload, SECRET, now - 3600)
    with pytest.raises(stripe.SignatureVerificationError):
        stripe.Webhook.construct_event(payload.decode(), stale, SECRET)


def test_an_event_is_posted_signed_and_acknowledged(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered)
    assert d.offer(event()) is True
    assert d.run_once() is None
    (delivery,) = hooks.wait_for(1)
    assert delivery.signature_ok and delivery.status == 200
    assert delivery.event["id"] == "evt_0001"
    assert delivery.headers["content-type"] == "application/json; charset=utf-8"
    assert delivery.headers["user-agent"] == USER_AGENT
    assert delivered == ["evt_0001"]
    assert stats(d) | {} == {
        "events": 1,
        "deliveries": 1,
        "attempts": 1,
        "successes": 1,
        "failures": 0,
        "given_up": 0,
        "duplicates": 0,
        "drops": 0,
        "reorders": 0,
        "bad_signatures": 0,
        "overflows": 0,
        "not_sent": 0,
        "pending": 0,
    }


def test_failures_are_retried_with_exponential_backoff(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered, retry_base_seconds=2.0)
    hooks.answer(500, 503)
    d.offer(event())
    assert d.run_once() == pytest.approx(2.0)  # first retry after the base
    assert len(hooks.wait_for(1)) == 1
    clock.now += 1.9
    assert d.run_once() == pytest.approx(0.1)  # not due yet: nothing sent
    assert len(hooks.deliveries) == 1
    clock.now += 0.1
    assert d.run_once() == pytest.approx(4.0)  # then doubling
    clock.now += 4.0
    assert d.run_once() is None
    assert [x.status for x in hooks.wait_for(3)] == [500, 503, 200]
    assert [a["outcome"] for a in d.snapshot()["recent"]] == ["retry", "retry", "success"]
    assert [a["attempt"] for a in d.snapshot()["recent"]] == [1, 2, 3]
    counts = stats(d)
    assert (counts["attempts"], counts["failures"], counts["successes"]) == (3, 2, 1)
    assert delivered == ["evt_0001"]


def test_a_delivery_is_given_up_after_max_attempts(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered, retry_base_seconds=1.0, max_attempts=3)
    hooks.answer(500, 500, 500, 500)
    d.offer(event())
    for _ in range(3):
        d.run_once()
        clock.now += 10
    assert d.run_once() is None
    assert len(hooks.wait_for(3)) == 3
    counts = stats(d)
    assert (counts["attempts"], counts["given_up"], counts["pending"]) == (3, 1, 0)
    assert delivered == []


def test_a_delivery_is_given_up_past_max_age(hooks: Receiver) -> None:
    clock = Clock()
    d = deliverer(hooks.url, clock, retry_base_seconds=10.0, max_age_seconds=15.0)
    hooks.answer(500, 500, 500)
    d.offer(event())
    assert d.run_once() == pytest.approx(10.0)
    clock.now += 10
    assert d.run_once() is None  # the next retry would be 30 s after the event
    assert stats(d)["given_up"] == 1


def test_a_refused_connection_is_a_failed_attempt() -> None:
    with Receiver(SECRET) as gone:
        url = gone.url
    clock = Clock()
    d = deliverer(url, clock, retry_base_seconds=1.0)
    d.offer(event())
    assert d.run_once() == pytest.approx(1.0)
    (attempt,) = d.snapshot()["recent"]
    assert attempt["status"] is None
    assert attempt["error"] and "Connection" in attempt["error"]


def test_a_slow_endpoint_times_out_and_is_retried(hooks: Receiver) -> None:
    clock = Clock()
    d = deliverer(hooks.url, clock, retry_base_seconds=1.0, timeout_seconds=0.2)
    hooks.hold()
    d.offer(event())
    assert d.run_once() == pytest.approx(1.0)
    (attempt,) = d.snapshot()["recent"]
    assert attempt["status"] is None and "timed out" in str(attempt["error"])
    hooks.release()
    clock.now += 1
    d.run_once()
    assert stats(d)["successes"] == 1


def test_duplicate_delivers_one_event_twice(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered, duplicate=1.0)
    d.offer(event())
    d.run_once()
    assert [x.event["id"] for x in hooks.wait_for(2)] == ["evt_0001", "evt_0001"]
    counts = stats(d)
    assert (counts["deliveries"], counts["duplicates"], counts["successes"]) == (2, 1, 2)
    assert delivered == ["evt_0001"]  # acknowledged once


def test_drop_never_sends_the_event(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered, drop=1.0)
    assert d.offer(event()) is True  # a webhook stays pending, never acknowledged
    assert d.run_once() is None
    assert hooks.deliveries == []
    counts = stats(d)
    assert (counts["drops"], counts["deliveries"], counts["attempts"]) == (1, 0, 0)
    assert delivered == []


def test_a_bad_signature_is_rejected_and_its_retry_is_good(hooks: Receiver) -> None:
    clock, delivered = Clock(), []
    d = deliverer(hooks.url, clock, delivered, bad_signature=1.0, retry_base_seconds=1.0)
    d.offer(event())
    assert d.run_once() == pytest.approx(1.0)
    clock.now += 1
    d.run_once()
    first, second = hooks.wait_for(2)
    assert (first.signature_ok, first.status) == (False, 400)
    assert (second.signature_ok, second.status) == (True, 200)
    assert [a["signature"] for a in d.snapshot()["recent"]] == ["bad", "good"]
    assert stats(d)["bad_signatures"] == 1
    assert delivered == ["evt_0001"]


def test_reorder_delays_deliveries_so_later_events_can_arrive_first(hooks: Receiver) -> None:
    clock = Clock()
    d = deliverer(hooks.url, clock, reorder_max_seconds=5.0)
    for n in range(20):
        d.offer(event(n))
    waits = d.run_once()
    sent_at_once = len(hooks.deliveries)
    assert waits is not None and sent_at_once < 20
    clock.now += 5.0
    assert d.run_once() is None
    arrived = [x.event["id"] for x in hooks.wait_for(20)]
    assert sorted(arrived) == [f"evt_{n:04d}" for n in range(20)]
    assert arrived != sorted(arrived)
    assert stats(d)["reorders"] == 20


def test_disabled_delivery_queues_nothing_and_holds_what_is_queued(hooks: Receiver) -> None:
    clock = Clock()
    d = deliverer(hooks.url, clock, enabled=False)
    assert d.offer(event(1)) is False
    assert stats(d)["not_sent"] == 1
    d.update({"enabled": True})
    d.offer(event(2))
    d.update({"enabled": False})
    assert d.run_once() is None
    assert hooks.deliveries == []
    assert stats(d)["pending"] == 1
    d.update({"enabled": True})
    d.run_once()
    assert [x.event["id"] for x in hooks.wait_for(1)] == ["evt_0002"]


def test_without_a_url_nothing_is_queued() -> None:
    d = WebhookDeliverer(WebhookSettings(), None, clock=Clock())
    assert d.offer(event()) is False
    assert d.run_once() is None


def test_a_full_inbox_never_blocks_the_api(hooks: Receiver) -> None:
    d = WebhookDeliverer(WebhookSettings(url=hooks.url), SECRET, clock=Clock(), inbox_size=2)
    assert [d.offer(event(n)) for n in range(3)] == [True, True, True]
    counts = stats(d)
    assert (counts["deliveries"], counts["overflows"], counts["pending"]) == (2, 1, 2)


def test_runtime_changes_and_the_secret_never_shown(hooks: Receiver) -> None:
    d = WebhookDeliverer(WebhookSettings(), None, clock=Clock())
    with pytest.raises(ConfigError, match="needs a signing secret"):
        d.update({"url": hooks.url})
    d.update({"url": hooks.url, "secret": SECRET, "duplicate": 0.5, "seed": 9})
    shown = d.snapshot()
    assert (shown["url"], shown["duplicate"], shown["seed"], shown["secret_set"]) == (
        hooks.url,
        0.5,
        9,
        True,
    )
    assert SECRET not in repr(shown)
    with pytest.raises(ConfigError, match="unknown webhook setting"):
        d.update({"colour": "blue"})


@pytest.mark.parametrize(
    "changes",
    [
        {"url": "ftp://example.com/hook"},
        {"url": "not a url"},
        {"enabled": "yes"},
        {"duplicate": 1.5},
        {"drop": -0.1},
        {"bad_signature": True},
        {"retry_base_seconds": 0},
        {"max_attempts": 0},
        {"timeout_seconds": -1},
        {"reorder_max_seconds": -1},
    ],
)
def test_invalid_settings_are_refused(changes: dict[str, Any]) -> None:
    with pytest.raises(ConfigError):
        WebhookSettings(**changes)


def test_a_url_without_a_secret_is_refused() -> None:
    with pytest.raises(ConfigError, match="signing secret"):
        WebhookDeliverer(WebhookSettings(url="http://127.0.0.1:1/x"), None)


def test_the_background_loop_delivers_and_stops(hooks: Receiver) -> None:
    d = WebhookDeliverer(WebhookSettings(url=hooks.url), SECRET)
    d.start()
    try:
        d.offer(event())
        assert hooks.wait_for(1)[0].signature_ok
    finally:
        d.stop()


def test_reset_forgets_queued_deliveries(hooks: Receiver) -> None:
    clock = Clock()
    d = deliverer(hooks.url, clock, retry_base_seconds=1.0)
    hooks.answer(500)
    d.offer(event())
    d.run_once()
    d.reset(WebhookSettings(url=hooks.url), SECRET, 3)
    clock.now += 10
    assert d.run_once() is None
    assert len(hooks.deliveries) == 1
    assert stats(d)["attempts"] == 0
