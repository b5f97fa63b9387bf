"""Idempotency store, intent store, fault decisions and scripts of the Stripe stand-in."""

import pytest

from stripe_standin.errors import StripeError
from stripe_standin.faults import (
    ConfigError,
    Fault,
    FaultInjector,
    FaultSettings,
    Script,
    ScriptedFault,
    parse_script_entry,
)
from stripe_standin.store import (
    Decision,
    IdempotencyStore,
    IntentStore,
    StoredResponse,
)

OK = StoredResponse(200, b'{"id": "pi_1"}', "req_1")


# --- idempotency -----------------------------------------------------------------------------


def test_first_use_claims_then_duplicates_see_in_flight() -> None:
    store = IdempotencyStore()
    assert store.begin("s", "k", "fp").decision is Decision.NEW
    assert store.in_flight() == 1
    assert store.begin("s", "k", "fp").decision is Decision.IN_FLIGHT
    assert store.begin("s", "k", "other").decision is Decision.IN_FLIGHT


def test_completed_key_replays_the_same_response() -> None:
    store = IdempotencyStore()
    store.begin("s", "k", "fp")
    store.complete("s", "k", OK)
    claim = store.begin("s", "k", "fp")
    assert claim.decision is Decision.REPLAY
    assert claim.response == OK
    assert store.in_flight() == 0


def test_completed_key_with_other_parameters_is_a_mismatch() -> None:
    store = IdempotencyStore()
    store.begin("s", "k", "fp")
    store.complete("s", "k", OK)
    assert store.begin("s", "k", "different").decision is Decision.MISMATCH


def test_keys_are_scoped_per_api_key() -> None:
    store = IdempotencyStore()
    a, b = IdempotencyStore.scope_for("sk_test_a"), IdempotencyStore.scope_for("sk_test_b")
    assert a != b
    assert "sk_test_a" not in a
    store.begin(a, "k", "fp")
    store.complete(a, "k", OK)
    assert store.begin(b, "k", "fp").decision is Decision.NEW


def test_released_key_can_run_again_but_release_never_drops_a_result() -> None:
    store = IdempotencyStore()
    store.begin("s", "k", "fp")
    store.release("s", "k")
    assert store.begin("s", "k", "fp").decision is Decision.NEW
    store.complete("s", "k", OK)
    store.release("s", "k")  # no-op once a result is saved
    assert store.begin("s", "k", "fp").decision is Decision.REPLAY


def test_results_expire_after_the_ttl() -> None:
    now = [1000.0]
    store = IdempotencyStore(ttl_seconds=60, clock=lambda: now[0])
    store.begin("s", "k", "fp")
    store.complete("s", "k", OK)
    now[0] += 59
    assert store.begin("s", "k", "other").decision is Decision.MISMATCH
    now[0] += 1
    assert store.begin("s", "k", "other").decision is Decision.NEW


def test_complete_after_clear_does_not_resurrect_the_key() -> None:
    store = IdempotencyStore()
    store.begin("s", "k", "fp")
    store.clear()
    store.complete("s", "k", OK)
    assert len(store) == 0


def test_intent_store_returns_copies_in_creation_order() -> None:
    store = IntentStore()
    store.add({"id": "pi_1", "metadata": {"a": "1"}}, "key-1", "req_1")
    store.add({"id": "pi_2", "metadata": {}}, None, "req_2")
    fetched = store.get("pi_1")
    assert fetched == {"id": "pi_1", "metadata": {"a": "1"}}
    assert fetched is not None
    fetched["metadata"]["a"] = "changed"
    assert store.get("pi_1") == {"id": "pi_1", "metadata": {"a": "1"}}
    assert [(e.intent["id"], e.idempotency_key) for e in store.all()] == [
        ("pi_1", "key-1"),
        ("pi_2", None),
    ]
    assert store.get("pi_3") is None
    store.clear()
    assert len(store) == 0


# --- fault settings and decisions ------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"drop": 1.5},
        {"fail_5xx": -0.1},
        {"drop": 0.6, "fail_429": 0.6},
        {"latency_ms": -1},
        {"latency_ms": 1.5},
        {"drop": True},
        {"fail_5xx": "0.1"},
        {"jitter": 1},
    ],
)
def test_invalid_fault_settings_are_refused(changes: dict[str, object]) -> None:
    with pytest.raises(ConfigError):
        FaultSettings().with_changes(changes)


def test_rates_are_stored_as_floats() -> None:
    assert FaultSettings().with_changes({"drop": 1}).as_dict()["drop"] == 1.0


def test_no_rates_means_no_faults() -> None:
    injector = FaultInjector(FaultSettings(), seed=1)
    assert {injector.decide() for _ in range(1000)} == {None}


@pytest.mark.parametrize("fault", list(Fault))
def test_rate_one_means_always(fault: Fault) -> None:
    injector = FaultInjector(FaultSettings().with_changes({fault.value: 1.0}), seed=1)
    assert {injector.decide() for _ in range(200)} == {fault}


def test_same_seed_same_decisions_and_rates_are_respected() -> None:
    settings = FaultSettings(drop=0.1, fail_5xx=0.2, fail_429=0.05, lose_response=0.15)
    one, two = FaultInjector(settings, seed=7), FaultInjector(settings, seed=7)
    run_one = [one.decide() for _ in range(10_000)]
    run_two = [two.decide() for _ in range(10_000)]
    assert run_one == run_two
    assert run_one != [FaultInjector(settings, seed=8).decide() for _ in range(10_000)]
    counts = {fault: run_one.count(fault) for fault in [*Fault, None]}
    assert 800 < counts[Fault.DROP] < 1200
    assert 1800 < counts[Fault.FAIL_5XX] < 2200
    assert 350 < counts[Fault.FAIL_429] < 650
    assert 1300 < counts[Fault.LOSE_RESPONSE] < 1700
    assert 4700 < counts[None] < 5300


def test_update_with_seed_restarts_the_sequence() -> None:
    settings = FaultSettings(drop=0.5)
    injector = FaultInjector(settings, seed=3)
    expected = [injector.decide() for _ in range(50)]
    injector.update({"seed": 3})
    assert [injector.decide() for _ in range(50)] == expected
    assert injector.update({"drop": 0.0, "latency_ms": 20}) == FaultSettings(latency_ms=20)
    injector.reset(settings, 3)
    assert injector.settings == settings
    assert [injector.decide() for _ in range(50)] == expected


# --- scripts ---------------------------------------------------------------------------------


def test_script_entries_are_parsed_into_errors_and_faults() -> None:
    error = parse_script_entry(
        {
            "status": 402,
            "error": {
                "type": "card_error",
                "code": "card_declined",
                "decline_code": "insufficient_funds",
                "message": "Your card has insufficient funds.",
            },
            "headers": {"Stripe-Should-Retry": "false"},
        }
    )
    assert isinstance(error, StripeError)
    assert (error.status, error.error_type, error.code, error.param) == (
        402,
        "card_error",
        "card_declined",
        None,
    )
    assert error.body()["error"]["decline_code"] == "insufficient_funds"
    assert error.headers == {"Stripe-Should-Retry": "false"}
    assert parse_script_entry({"fault": "drop"}) == ScriptedFault(Fault.DROP)
    assert parse_script_entry({"fault": "lose_response"}) == ScriptedFault(Fault.LOSE_RESPONSE)


@pytest.mark.parametrize(
    "entry",
    [
        {"status": 200, "error": {"type": "x", "message": "y"}},
        {"status": 402},
        {"status": 402, "error": {"type": "card_error"}},
        {"status": "402", "error": {"type": "card_error", "message": "m"}},
        {"fault": "fail_5xx"},
        {"fault": "drop", "status": 500},
        {"status": 500, "error": {"type": "api_error", "message": "m"}, "delay": 1},
        "card_declined",
    ],
)
def test_bad_script_entries_are_refused(entry: object) -> None:
    with pytest.raises(ConfigError):
        parse_script_entry(entry)


def test_script_is_consumed_in_order_and_can_be_replaced_or_extended() -> None:
    script = Script()
    drop, lose = ScriptedFault(Fault.DROP), ScriptedFault(Fault.LOSE_RESPONSE)
    assert script.load([drop, lose]) == 2
    assert script.load([lose], append=True) == 3
    assert [script.pop(), script.pop(), script.pop(), script.pop()] == [drop, lose, lose, None]
    script.load([drop, drop])
    assert script.load([lose]) == 1
    assert script.pop() == lose
