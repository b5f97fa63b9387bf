"""The PaymentIntent state machine after creation: confirm, 3-D Secure, settlement, cancel.

States and moves, as Stripe documents them (capture_method manual stops at requires_capture):

=========================  ======================================  ==========================
from                       call                                    to (events, in order)
=========================  ======================================  ==========================
requires_payment_method,   confirm, a succeeding card              succeeded (charge.succeeded,
requires_confirmation,                                             payment_intent.succeeded)
requires_action            confirm, a declined card                requires_payment_method, 402
                                                                   (charge.failed,
                                                                   payment_intent.payment_failed)
                           confirm, a card that needs 3-D Secure   requires_action
                                                                   (payment_intent.requires_action)
                           confirm, an ACH bank account            processing (charge.pending,
                                                                   payment_intent.processing)
requires_action            control: 3-D Secure completed           as a succeeding/declined card
                           control: 3-D Secure failed              requires_payment_method
                                                                   (payment_intent.payment_failed)
processing                 control: settled, succeeded / failed    succeeded / requires_payment_
                                                                   method (charge.succeeded|failed,
                                                                   payment_intent.succeeded|
                                                                   payment_failed)
requires_payment_method,   cancel                                  canceled
requires_confirmation,                                             (payment_intent.canceled)
requires_action,
requires_capture
requires_capture           capture, all or ``amount_to_capture``   succeeded (charge.captured,
                                                                   payment_intent.succeeded)
requires_capture           ``capture_before`` passed, or control:  canceled, reason automatic
                           expire now                              (charge.expired,
                                                                   payment_intent.canceled)
=========================  ======================================  ==========================

A manual-capture card confirmation authorises: the intent waits in ``requires_capture`` with
``amount_capturable = amount`` and ``amount_received = 0``, its charge ``captured: false``
with ``payment_method_details.card.capture_before`` = authorisation time + the authorisation
window (7 days, like Stripe; a change of the window applies to later authorisations, as a
``capture_before`` once given never moves). A partial capture releases the rest of the
authorisation: ``amount_received`` and the charge's ``amount_captured`` are what was
captured, ``amount_refunded`` stays 0. An authorisation canceled or expired before capture
is released in full: Stripe marks its charge ``refunded`` (``amount_refunded = amount``;
the stand-in makes no Refund object for it). Expiry is checked lazily before every API request
and by :class:`stripe_standin.expiry.ExpirySweeper` in the server, so the events go out
even when nobody asks.

Anything else answers Stripe's ``payment_intent_unexpected_state`` (400). Stripe lets some
``processing`` intents be canceled "in rare cases"; an ACH debit in flight is not one of them,
so the stand-in refuses to cancel ``processing``.
"""

from __future__ import annotations

import copy
import threading
import time
from collections.abc import Callable
from typing import Any

from stripe_standin import errors
from stripe_standin.errors import StripeError
from stripe_standin.events import AUTOMATIC, EventStore, Origin
from stripe_standin.intents import random_token
from stripe_standin.methods import (
    AUTHENTICATION_FAILURE_MESSAGE,
    Decline,
    Outcome,
    TestMethod,
    lookup,
)
from stripe_standin.store import IntentStore

CONFIRMABLE = ("requires_payment_method", "requires_confirmation", "requires_action")
CANCELABLE = (
    "requires_payment_method",
    "requires_capture",
    "requires_confirmation",
    "requires_action",
)
CANCELLATION_REASONS = ("duplicate", "fraudulent", "requested_by_customer", "abandoned")
CONFIRM_PARAMS = frozenset(
    {
        "expand",
        "mandate_data",
        "off_session",
        "payment_method",
        "payment_method_options",
        "receipt_email",
        "return_url",
        "setup_future_usage",
        "use_stripe_sdk",
    }
)
CANCEL_PARAMS = frozenset({"cancellation_reason", "expand"})
CAPTURE_PARAMS = frozenset({"amount_to_capture", "expand", "metadata"})
CAPTURABLE = ("requires_capture",)
#: Stripe cancels an uncaptured card authorisation 7 days after it was made.
DEFAULT_AUTHORIZATION_WINDOW = 7 * 24 * 60 * 60


def unexpected_state(action: str, intent: dict[str, Any], allowed: tuple[str, ...]) -> StripeError:
    """Stripe's 400 for an action the intent's status does not allow."""
    message = (
        f"You cannot {action} this PaymentIntent because it has a status of {intent['status']}."
    )
    if action == "capture":
        message = (
            "This PaymentIntent could not be captured because it has a status of "
            f"{intent['status']}. Only a PaymentIntent with one of the following statuses may "
            "be captured: " + ", ".join(allowed) + "."
        )
    if action == "cancel":
        message += (
            " Only a PaymentIntent with one of the following statuses may be canceled: "
            + ", ".join(allowed)
            + "."
        )
    return StripeError(
        400,
        "invalid_request_error",
        message,
        code="payment_intent_unexpected_state",
        extra={"payment_intent": intent},
    )


class Flow:
    """Moves stored intents through their states and records an event for each change."""

    def __init__(
        self,
        intents: IntentStore,
        events: EventStore,
        clock: Callable[[], float] = time.time,
        *,
        authorization_window: float = DEFAULT_AUTHORIZATION_WINDOW,
    ) -> None:
        self.intents = intents
        self.events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._window = _check_window(authorization_window)
        # Uncaptured authorisations: intent id -> capture_before (unix time).
        self._authorizations: dict[str, int] = {}
        # PaymentMethods made from test tokens (pm_...) and charges (ch_/py_...), by id.
        self._methods: dict[str, tuple[TestMethod, dict[str, Any]]] = {}
        self._charges: dict[str, dict[str, Any]] = {}

    def clear(self) -> None:
        """Forget payment methods and charges."""
        with self._lock:
            self._methods.clear()
            self._charges.clear()
            self._authorizations.clear()

    @property
    def authorization_window(self) -> float:
        """Seconds an authorisation made now stays capturable."""
        with self._lock:
            return self._window

    @authorization_window.setter
    def authorization_window(self, seconds: float) -> None:
        """Applies to authorisations made from now on: like Stripe's ``capture_before``, a
        deadline already given does not move."""
        checked = _check_window(seconds)
        with self._lock:
            self._window = checked

    def charge(self, charge_id: str) -> dict[str, Any] | None:
        """A charge made by a confirmation, or ``None``."""
        with self._lock:
            found = self._charges.get(charge_id)
            return copy.deepcopy(found) if found is not None else None

    def set_amount_refunded(self, charge_id: str, amount: int) -> dict[str, Any]:
        """The charge's succeeded refunds add up to ``amount``: ``refunded`` once that is all
        that was captured. A copy of the charge after."""
        with self._lock:
            charge = self._charges[charge_id]
            charge["amount_refunded"] = amount
            charge["refunded"] = amount >= int(charge["amount_captured"])
            return copy.deepcopy(charge)

    # --- API calls -----------------------------------------------------------------------------

    def confirm(
        self, intent_id: str, form: dict[str, Any], origin: Origin, *, base_url: str = ""
    ) -> dict[str, Any]:
        """``POST /v1/payment_intents/{id}/confirm``; a decline raises the 402 after the
        intent moved back to ``requires_payment_method``."""
        for name in form:
            if name not in CONFIRM_PARAMS:
                raise errors.unknown_param(name)
        token = form.get("payment_method")
        if token is not None and (not isinstance(token, str) or token == ""):
            raise errors.invalid_request(
                "Invalid string: payment_method must be a PaymentMethod id.",
                param="payment_method",
            )
        return_url = form.get("return_url")
        if return_url is not None and not isinstance(return_url, str):
            raise errors.invalid_request("Invalid string: return_url", param="return_url")
        method = self._method_for(token) if token is not None else None

        def change(intent: dict[str, Any]) -> StripeError | None:
            if intent["status"] not in CONFIRMABLE:
                raise unexpected_state("confirm", intent, CONFIRMABLE)
            chosen = method
            if chosen is None:
                attached = intent["payment_method"]
                chosen = self._known(attached) if attached else None
                if chosen is None:
                    raise errors.invalid_request(
                        "You cannot confirm this PaymentIntent because it's missing a payment "
                        "method. You can either update the PaymentIntent with a payment method "
                        "and then confirm it again, or confirm it again directly with a "
                        "payment method.",
                        code="payment_intent_unexpected_state",
                    )
            test_method, pm = chosen
            self._check_allowed(intent, test_method)
            intent["payment_method"] = pm["id"]
            intent["last_payment_error"] = None
            intent["next_action"] = None
            return self._attempt(
                intent,
                test_method=test_method,
                pm=pm,
                origin=origin,
                return_url=return_url,
                base_url=base_url,
            )

        intent, error = self._transition(intent_id, change)
        if error is not None:
            raise error
        return intent

    def cancel(self, intent_id: str, form: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """``POST /v1/payment_intents/{id}/cancel``."""
        for name in form:
            if name not in CANCEL_PARAMS:
                raise errors.unknown_param(name)
        reason = form.get("cancellation_reason")
        if reason is not None and reason not in CANCELLATION_REASONS:
            raise errors.invalid_request(
                "Invalid cancellation_reason: must be one of duplicate, fraudulent, "
                "requested_by_customer, or abandoned",
                param="cancellation_reason",
            )

        def change(intent: dict[str, Any]) -> None:
            if intent["status"] not in CANCELABLE:
                raise unexpected_state("cancel", intent, CANCELABLE)
            if intent["status"] == "requires_capture":
                self._release(intent["latest_charge"])
            intent.update(
                status="canceled",
                canceled_at=int(self._clock()),
                cancellation_reason=reason,
                next_action=None,
                amount_capturable=0,
            )
            with self._lock:
                self._authorizations.pop(intent["id"], None)
            self._emit("payment_intent.canceled", intent, origin)

        intent, _ = self._transition(intent_id, change)
        return intent

    def capture(self, intent_id: str, form: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """``POST /v1/payment_intents/{id}/capture``: all of ``amount_capturable`` or
        ``amount_to_capture`` of it; the rest of the authorisation is released (not refunded)."""
        for name in form:
            if name not in CAPTURE_PARAMS:
                raise errors.unknown_param(name)
        raw = form.get("amount_to_capture")
        wanted: int | None = None
        if raw is not None:
            if not isinstance(raw, str) or not raw.isdigit():
                raise errors.invalid_request(f"Invalid integer: {raw}", param="amount_to_capture")
            wanted = int(raw)
        metadata = form.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            raise errors.invalid_request("Invalid object", param="metadata")
        self.expire_due()

        def change(intent: dict[str, Any]) -> None:
            if intent["status"] not in CAPTURABLE:
                raise unexpected_state("capture", intent, CAPTURABLE)
            capturable = int(intent["amount_capturable"])
            amount = capturable if wanted is None else wanted
            if amount > capturable:
                raise errors.invalid_request(
                    f"The amount_to_capture ({amount}) must be less than or equal to the "
                    f"PaymentIntent's amount_capturable ({capturable}).",
                    param="amount_to_capture",
                    code="amount_too_large",
                )
            if amount < 1:
                raise errors.invalid_request(
                    "Amount to capture must be at least 1.",
                    param="amount_to_capture",
                    code="amount_too_small",
                )
            if metadata:
                _merge_metadata(intent["metadata"], metadata)
            charge_id = intent["latest_charge"]
            self._update_charge(charge_id, captured=True, amount_captured=amount)
            with self._lock:
                self._authorizations.pop(intent["id"], None)
            self._emit_charge("charge.captured", charge_id, origin)
            intent.update(status="succeeded", amount_received=amount, amount_capturable=0)
            self._emit("payment_intent.succeeded", intent, origin)

        intent, _ = self._transition(intent_id, change)
        return intent

    # --- authorisation expiry ------------------------------------------------------------------

    def expire(self, intent_id: str) -> dict[str, Any]:
        """Stripe gives up an uncaptured authorisation: the intent is canceled with
        ``cancellation_reason: automatic`` (charge.expired, payment_intent.canceled)."""

        def change(intent: dict[str, Any]) -> None:
            if intent["status"] not in CAPTURABLE:
                raise unexpected_state("expire", intent, CAPTURABLE)
            self._expire(intent)

        intent, _ = self._transition(intent_id, change)
        return intent

    def expire_due(self) -> list[str]:
        """Expire every authorisation whose ``capture_before`` has passed; their ids."""
        now = int(self._clock())
        with self._lock:
            due = [i for i, deadline in self._authorizations.items() if deadline <= now]
        expired = []
        for intent_id in due:

            def change(intent: dict[str, Any]) -> bool:
                if intent["status"] not in CAPTURABLE:  # captured or canceled meanwhile
                    return False
                self._expire(intent)
                return True

            result = self.intents.transition(intent_id, change)
            if result is not None and result[1]:
                expired.append(intent_id)
            with self._lock:
                self._authorizations.pop(intent_id, None)
        return expired

    def _expire(self, intent: dict[str, Any]) -> None:
        with self._lock:
            self._authorizations.pop(intent["id"], None)
        self._release(intent["latest_charge"])
        self._emit_charge("charge.expired", intent["latest_charge"], AUTOMATIC)
        intent.update(
            status="canceled",
            canceled_at=int(self._clock()),
            cancellation_reason="automatic",
            amount_capturable=0,
        )
        self._emit("payment_intent.canceled", intent, AUTOMATIC)

    # --- control calls (the customer's bank, the 3-D Secure page) ------------------------------

    def authenticate(self, intent_id: str, *, succeed: bool) -> dict[str, Any]:
        """The customer completes (or fails) 3-D Secure for an intent in ``requires_action``."""

        def change(intent: dict[str, Any]) -> None:
            if intent["status"] != "requires_action":
                raise unexpected_state("authenticate", intent, ("requires_action",))
            test_method, pm = self._attached(intent)
            intent["next_action"] = None
            if succeed:
                self._charge_now(intent, test_method, pm, AUTOMATIC, test_method.decline)
                return
            intent.update(status="requires_payment_method", payment_method=None)
            intent["last_payment_error"] = {
                "code": "payment_intent_authentication_failure",
                "doc_url": errors.DOC_URL_BASE + "payment-intent-authentication-failure",
                "message": AUTHENTICATION_FAILURE_MESSAGE,
                "payment_method": pm,
                "type": "invalid_request_error",
            }
            self._emit("payment_intent.payment_failed", intent, AUTOMATIC)

        intent, _ = self._transition(intent_id, change)
        return intent

    def settle(self, intent_id: str, *, succeed: bool) -> dict[str, Any]:
        """The asynchronous payment of a ``processing`` intent settles (or fails)."""

        def change(intent: dict[str, Any]) -> None:
            if intent["status"] != "processing":
                raise unexpected_state("settle", intent, ("processing",))
            test_method, pm = self._attached(intent)
            charge_id = intent["latest_charge"]
            if succeed:
                self._update_charge(charge_id, status="succeeded", paid=True, captured=True)
                self._emit_charge("charge.succeeded", charge_id, AUTOMATIC)
                self._succeeded(intent, AUTOMATIC)
            else:
                decline = test_method.decline
                assert decline is not None
                self._update_charge(
                    charge_id,
                    status="failed",
                    failure_code=decline.code,
                    failure_message=decline.message,
                )
                self._emit_charge("charge.failed", charge_id, AUTOMATIC)
                self._failed(
                    intent,
                    pm=pm,
                    decline=decline,
                    charge_id=charge_id,
                    error_type="invalid_request_error",
                    origin=AUTOMATIC,
                )

        intent, _ = self._transition(intent_id, change)
        return intent

    # --- the moves -----------------------------------------------------------------------------

    def _attempt(
        self,
        intent: dict[str, Any],
        *,
        test_method: TestMethod,
        pm: dict[str, Any],
        origin: Origin,
        return_url: str | None,
        base_url: str,
    ) -> StripeError | None:
        if test_method.outcome is Outcome.AUTHENTICATE:
            url = f"{base_url}/_standin/payment_intents/{intent['id']}/3ds"
            intent["status"] = "requires_action"
            if return_url:
                intent["next_action"] = {
                    "type": "redirect_to_url",
                    "redirect_to_url": {"url": url, "return_url": return_url},
                }
            else:
                intent["next_action"] = {
                    "type": "use_stripe_sdk",
                    "use_stripe_sdk": {"type": "three_d_secure_redirect", "stripe_js": url},
                }
            self._emit("payment_intent.requires_action", intent, origin)
            return None
        if test_method.outcome is Outcome.ASYNC:
            charge_id = self._new_charge(intent, test_method, pm, status="pending")
            intent.update(status="processing", latest_charge=charge_id)
            self._emit_charge("charge.pending", charge_id, origin)
            self._emit("payment_intent.processing", intent, origin)
            return None
        decline = test_method.decline if test_method.outcome is Outcome.DECLINE else None
        return self._charge_now(intent, test_method, pm, origin, decline)

    def _charge_now(
        self,
        intent: dict[str, Any],
        test_method: TestMethod,
        pm: dict[str, Any],
        origin: Origin,
        decline: Decline | None,
    ) -> StripeError | None:
        """A card charge: succeeds (or authorizes, for manual capture) or is declined."""
        manual = intent["capture_method"] == "manual"
        if decline is None:
            charge_id = self._new_charge(
                intent, test_method, pm, status="succeeded", captured=not manual
            )
            intent["latest_charge"] = charge_id
            self._emit_charge("charge.succeeded", charge_id, origin)
            if manual:
                self._authorize(intent, charge_id)
                intent.update(status="requires_capture", amount_capturable=intent["amount"])
                self._emit("payment_intent.amount_capturable_updated", intent, origin)
            else:
                self._succeeded(intent, origin)
            return None
        charge_id = self._new_charge(intent, test_method, pm, status="failed", decline=decline)
        self._emit_charge("charge.failed", charge_id, origin)
        self._failed(
            intent,
            pm=pm,
            decline=decline,
            charge_id=charge_id,
            error_type="card_error",
            origin=origin,
        )
        error = intent["last_payment_error"]
        extra = {k: v for k, v in error.items() if k not in ("type", "code", "message")}
        return StripeError(
            402,
            "card_error",
            decline.message,
            code=decline.code,
            extra={**extra, "payment_intent": intent},
        )

    def _release(self, charge_id: str) -> None:
        """An uncaptured authorisation given up (canceled or expired): Stripe marks its
        charge refunded, in full (no Refund object is made here)."""
        with self._lock:
            charge = self._charges[charge_id]
            charge.update(refunded=True, amount_refunded=charge["amount"])

    def _authorize(self, intent: dict[str, Any], charge_id: str) -> None:
        """An uncaptured card authorisation: capturable until ``capture_before``."""
        with self._lock:
            deadline = int(self._clock() + self._window)
            self._authorizations[intent["id"]] = deadline
            details = self._charges[charge_id]["payment_method_details"]
            details["card"] = {**details.get("card", {}), "capture_before": deadline}

    def _succeeded(self, intent: dict[str, Any], origin: Origin) -> None:
        intent.update(status="succeeded", amount_received=intent["amount"], amount_capturable=0)
        self._emit("payment_intent.succeeded", intent, origin)

    def _failed(
        self,
        intent: dict[str, Any],
        *,
        pm: dict[str, Any],
        decline: Decline,
        charge_id: str,
        error_type: str,
        origin: Origin,
    ) -> None:
        error: dict[str, Any] = {
            "charge": charge_id,
            "code": decline.code,
            "doc_url": errors.DOC_URL_BASE + decline.code.replace("_", "-"),
            "message": decline.message,
            "payment_method": pm,
            "type": error_type,
        }
        if decline.decline_code is not None:
            error["decline_code"] = decline.decline_code
        intent.update(
            status="requires_payment_method",
            payment_method=None,
            latest_charge=charge_id,
            last_payment_error=error,
        )
        self._emit("payment_intent.payment_failed", intent, origin)

    # --- helpers -------------------------------------------------------------------------------

    def _transition(
        self, intent_id: str, change: Callable[[dict[str, Any]], Any]
    ) -> tuple[dict[str, Any], Any]:
        result = self.intents.transition(intent_id, change)
        if result is None:
            raise errors.resource_missing("payment_intent", intent_id, "intent")
        return result

    def _method_for(self, token: str) -> tuple[TestMethod, dict[str, Any]]:
        """A PaymentMethod id made before, or a new one from a test token."""
        known = self._known(token)
        if known is not None:
            return known
        test_method = lookup(token)
        if test_method is None:
            raise errors.resource_missing("PaymentMethod", token, "payment_method")
        pm = self._payment_method_object(test_method)
        with self._lock:
            self._methods[pm["id"]] = (test_method, pm)
        return test_method, pm

    def _known(self, pm_id: str) -> tuple[TestMethod, dict[str, Any]] | None:
        with self._lock:
            return self._methods.get(pm_id)

    def _attached(self, intent: dict[str, Any]) -> tuple[TestMethod, dict[str, Any]]:
        known = self._known(intent["payment_method"] or "")
        if known is None:  # pragma: no cover - every requires_action/processing intent has one
            raise errors.api_error()
        return known

    @staticmethod
    def _check_allowed(intent: dict[str, Any], test_method: TestMethod) -> None:
        automatic = intent.get("automatic_payment_methods") or {}
        allowed = list(intent["payment_method_types"])
        if automatic.get("enabled") or test_method.type in allowed:
            return
        raise errors.invalid_request(
            f"The PaymentMethod provided ({test_method.type}) is not allowed for this "
            "PaymentIntent. Please attach a PaymentMethod of one of the following types: "
            f"{', '.join(allowed)}. Alternatively update the allowed payment_method_types for "
            f'this PaymentIntent to include "{test_method.type}".',
            param="payment_method",
            code="payment_intent_incompatible_payment_method",
        )

    def _payment_method_object(self, test_method: TestMethod) -> dict[str, Any]:
        pm: dict[str, Any] = {
            "id": "pm_" + random_token(24),
            "object": "payment_method",
            "billing_details": {
                "address": {
                    "city": None,
                    "country": None,
                    "line1": None,
                    "line2": None,
                    "postal_code": None,
                    "state": None,
                },
                "email": None,
                "name": None,
                "phone": None,
            },
            "created": int(self._clock()),
            "customer": None,
            "livemode": False,
            "metadata": {},
            "type": test_method.type,
        }
        if test_method.type == "card":
            pm["card"] = {
                "brand": test_method.brand,
                "country": "US",
                "exp_month": 12,
                "exp_year": time.gmtime(self._clock()).tm_year + 3,
                "funding": test_method.funding,
                "last4": test_method.last4,
            }
        else:
            pm["us_bank_account"] = {
                "account_holder_type": "individual",
                "account_type": "checking",
                "bank_name": "STRIPE TEST BANK",
                "last4": test_method.last4,
                "routing_number": "110000000",
            }
        return pm

    def _new_charge(
        self,
        intent: dict[str, Any],
        test_method: TestMethod,
        pm: dict[str, Any],
        *,
        status: str,
        captured: bool = True,
        decline: Decline | None = None,
    ) -> str:
        prefix = "ch_" if test_method.type == "card" else "py_"
        succeeded = status == "succeeded"
        charge: dict[str, Any] = {
            "id": prefix + random_token(24),
            "object": "charge",
            "amount": intent["amount"],
            "amount_captured": intent["amount"] if succeeded and captured else 0,
            "amount_refunded": 0,
            "balance_transaction": None,
            "billing_details": pm["billing_details"],
            "captured": succeeded and captured,
            "created": int(self._clock()),
            "currency": intent["currency"],
            "customer": None,
            "description": intent["description"],
            "failure_code": decline.code if decline else None,
            "failure_message": decline.message if decline else None,
            "livemode": False,
            "metadata": dict(intent["metadata"]),
            "outcome": _outcome(status, decline),
            "paid": succeeded,
            "payment_intent": intent["id"],
            "payment_method": pm["id"],
            "payment_method_details": {
                "type": test_method.type,
                test_method.type: pm.get(test_method.type, {}),
            },
            "refunded": False,
            "status": status,
        }
        with self._lock:
            self._charges[charge["id"]] = charge
        return str(charge["id"])

    def _update_charge(self, charge_id: str, **changes: Any) -> None:
        with self._lock:
            charge = self._charges[charge_id]
            charge.update(changes)
            if changes.get("status") == "succeeded":
                charge["amount_captured"] = charge["amount"]
            charge["outcome"] = _outcome(
                charge["status"],
                Decline(charge["failure_code"], None, charge["failure_message"])
                if charge["failure_code"]
                else None,
            )

    def _emit(self, event_type: str, intent: dict[str, Any], origin: Origin) -> None:
        self.events.record(event_type, intent, origin, created=int(self._clock()))

    def _emit_charge(self, event_type: str, charge_id: str, origin: Origin) -> None:
        charge = self.charge(charge_id)
        assert charge is not None
        self.events.record(event_type, charge, origin, created=int(self._clock()))


def _check_window(seconds: float) -> float:
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not seconds > 0:
        raise ValueError(f"the authorization window must be a positive number, got {seconds!r}")
    return float(seconds)


def _merge_metadata(target: dict[str, Any], changes: dict[str, Any]) -> None:
    """Stripe's metadata update: an empty value unsets a key."""
    for key, value in changes.items():
        if value == "":
            target.pop(key, None)
        else:
            target[key] = str(value)


def _outcome(status: str, decline: Decline | None) -> dict[str, Any] | None:
    if status == "pending":
        return None
    if decline is None:
        return {
            "network_status": "approved_by_network",
            "reason": None,
            "risk_level": "normal",
            "seller_message": "Payment complete.",
            "type": "authorized",
        }
    return {
        "network_status": "declined_by_network",
        "reason": decline.decline_code or decline.code,
        "risk_level": "normal",
        "seller_message": "The bank did not return any further details with this decline.",
        "type": "issuer_declined",
    }
