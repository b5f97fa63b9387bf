"""Refunds of captured charges: ``POST /v1/refunds``, ``GET /v1/refunds/{id}``, ``GET
/v1/refunds``, and their settlement through the control API.

Arithmetic, as Stripe keeps it: the refunds of a charge that are not ``failed`` or
``canceled`` never add up to more than what was captured (``amount_captured``, the
intent's ``amount_received``). Each charge has its own lock, so concurrent refunds of one
charge are decided one after the other; refunds of different charges do not wait for each
other. A refund without ``amount`` takes what is left. Asking for more answers Stripe's
``charge_already_refunded`` when the charge is fully refunded, and its ``amount_too_large``
``invalid_request_error`` otherwise.

A new refund ``succeeded`` at once (refund.created, charge.refunded), unless the pending knob
is on (``--refunds-pending``, ``POST /_standin/refunds/config``): then it stays ``pending``
(refund.created) until the control API settles it: ``succeeded`` (refund.updated,
charge.refunded) or ``failed`` with a ``failure_reason`` (refund.updated, refund.failed). A
pending refund holds its amount; a failed one gives it back. The charge's
``amount_refunded`` and ``refunded`` (fully refunded) follow the succeeded refunds only.

Only a captured, succeeded charge can be refunded: an authorisation still waiting for
capture is released by canceling its PaymentIntent instead.
"""

from __future__ import annotations

import copy
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

from stripe_standin import errors
from stripe_standin.currencies import format_amount
from stripe_standin.events import EventStore, Origin, created_bounds, within_bounds
from stripe_standin.flow import Flow
from stripe_standin.intents import random_token
from stripe_standin.validation import validate_metadata

REASONS = ("duplicate", "fraudulent", "requested_by_customer")
FAILURE_REASONS = (
    "charge_for_pending_refund_disputed",
    "declined",
    "expired_or_canceled_card",
    "insufficient_funds",
    "lost_or_stolen_card",
    "merchant_request",
    "unknown",
)
CREATE_PARAMS = frozenset({"amount", "charge", "expand", "metadata", "payment_intent", "reason"})
LIST_PARAMS = frozenset(
    {"charge", "created", "ending_before", "expand", "limit", "payment_intent", "starting_after"}
)
MAX_LIST_LIMIT = 100
#: Statuses whose amount counts against what is left to refund.
HOLDING = ("pending", "requires_action", "succeeded")


class RefundStateError(ValueError):
    """A control call on a refund whose status does not allow it."""


class Refunds:
    """Every refund, by id in creation order, over the charges a :class:`Flow` made."""

    def __init__(
        self,
        flow: Flow,
        events: EventStore,
        clock: Callable[[], float] = time.time,
        *,
        pending: bool = False,
    ) -> None:
        self._flow = flow
        self._events = events
        self._clock = clock
        self._lock = threading.Lock()
        self._pending = pending
        self._refunds: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._charge_locks: dict[str, threading.Lock] = {}

    @property
    def pending(self) -> bool:
        """Whether new refunds stay pending until settled."""
        with self._lock:
            return self._pending

    @pending.setter
    def pending(self, value: bool) -> None:
        with self._lock:
            self._pending = bool(value)

    def clear(self) -> None:
        """Forget every refund."""
        with self._lock:
            self._refunds.clear()
            self._charge_locks.clear()

    def get(self, refund_id: str) -> dict[str, Any] | None:
        """A copy of the refund, or ``None``."""
        with self._lock:
            found = self._refunds.get(refund_id)
            return copy.deepcopy(found) if found is not None else None

    def all(self) -> list[dict[str, Any]]:
        """Every refund, oldest first (copies)."""
        with self._lock:
            return copy.deepcopy(list(self._refunds.values()))

    # --- API calls -----------------------------------------------------------------------------

    def create(self, form: dict[str, Any], origin: Origin) -> dict[str, Any]:
        """``POST /v1/refunds``; raises ``StripeError`` with Stripe's refusals."""
        for name in form:
            if name not in CREATE_PARAMS:
                raise errors.unknown_param(name)
        amount = _amount(form.get("amount"))
        reason = form.get("reason")
        if reason is not None and reason not in REASONS:
            raise errors.invalid_request(
                "Invalid reason: must be one of duplicate, fraudulent, or requested_by_customer",
                param="reason",
            )
        metadata = validate_metadata(form.get("metadata"))
        charge_id = self._charge_id(form)
        with self._charge_lock(charge_id):
            charge = self._flow.charge(charge_id)
            assert charge is not None
            if not (charge["captured"] and charge["status"] == "succeeded"):
                raise errors.invalid_request(
                    f"Charge {charge_id} has not been captured: there is nothing to refund. "
                    "Cancel its PaymentIntent to release the authorisation.",
                    param="charge",
                )
            left = int(charge["amount_captured"]) - self._held(charge_id)
            wanted = left if amount is None else amount
            if left <= 0 and charge["refunded"]:
                raise errors.invalid_request(
                    f"Charge {charge_id} has already been refunded.",
                    code="charge_already_refunded",
                    param="charge",
                )
            if wanted > left or wanted <= 0:
                currency = charge["currency"]
                raise errors.invalid_request(
                    f"Refund amount ({format_amount(wanted, currency)}) is greater than "
                    f"unrefunded amount on charge ({format_amount(max(left, 0), currency)})",
                    code="amount_too_large",
                    param="amount",
                )
            refund: dict[str, Any] = {
                "id": "re_" + random_token(24),
                "object": "refund",
                "amount": wanted,
                "balance_transaction": None,
                "charge": charge_id,
                "created": int(self._clock()),
                "currency": charge["currency"],
                "destination_details": None,
                "failure_reason": None,
                "metadata": metadata,
                "payment_intent": charge["payment_intent"],
                "reason": reason,
                "receipt_number": None,
                "source_transfer_reversal": None,
                "status": "pending" if self.pending else "succeeded",
                "transfer_reversal": None,
            }
            with self._lock:
                self._refunds[refund["id"]] = refund
                snapshot = copy.deepcopy(refund)
            self._record("refund.created", snapshot, origin)
            if snapshot["status"] == "succeeded":
                self._charge_refunded(charge_id, origin)
            return snapshot

    def list(self, form: dict[str, Any]) -> dict[str, Any]:
        """``GET /v1/refunds``: newest first, by ``payment_intent`` or ``charge`` and
        ``created`` (a timestamp or ``created[gt|gte|lt|lte]``), with Stripe's ``limit`` and
        cursors."""
        for name in form:
            if name not in LIST_PARAMS:
                raise errors.unknown_param(name)
        limit = _limit(form.get("limit"))
        created = created_bounds(form.get("created"))
        if "starting_after" in form and "ending_before" in form:
            raise errors.invalid_request(
                "You may only specify one of these parameters: ending_before, starting_after.",
                param="ending_before",
            )
        with self._lock:
            newest_first = copy.deepcopy(list(reversed(self._refunds.values())))
        for name in ("payment_intent", "charge"):
            wanted = form.get(name)
            if wanted is not None:
                newest_first = [r for r in newest_first if r[name] == wanted]
        newest_first = [r for r in newest_first if within_bounds(int(r["created"]), created)]
        if "starting_after" in form:
            at = _position(form["starting_after"], newest_first, "starting_after")
            rest = newest_first[at + 1 :]
            page, has_more = rest[:limit], len(rest) > limit
        elif "ending_before" in form:
            at = _position(form["ending_before"], newest_first, "ending_before")
            before = newest_first[:at]
            page, has_more = before[-limit:], len(before) > limit
        else:
            page, has_more = newest_first[:limit], len(newest_first) > limit
        return {"object": "list", "data": page, "has_more": has_more, "url": "/v1/refunds"}

    # --- control calls (the card network answers) ----------------------------------------------

    def settle(
        self, refund_id: str, *, succeed: bool, failure_reason: str | None = None
    ) -> dict[str, Any]:
        """A pending refund succeeds, or fails (``failure_reason``, default ``declined``)."""
        if succeed and failure_reason is not None:
            raise RefundStateError("failure_reason is only for a refund that fails")
        reason = failure_reason or "declined"
        if not succeed and reason not in FAILURE_REASONS:
            raise RefundStateError(f"failure_reason must be one of {', '.join(FAILURE_REASONS)}")
        found = self.get(refund_id)
        if found is None:
            raise errors.resource_missing("refund", refund_id, "id")
        with self._charge_lock(found["charge"]):
            with self._lock:
                refund = self._refunds[refund_id]
                if refund["status"] != "pending":
                    raise RefundStateError(
                        f"refund {refund_id} is {refund['status']}; only a pending one settles"
                    )
                refund["status"] = "succeeded" if succeed else "failed"
                if not succeed:
                    refund["failure_reason"] = reason
                snapshot = copy.deepcopy(refund)
            automatic = Origin()
            self._record("refund.updated", snapshot, automatic, previous={"status": "pending"})
            if succeed:
                self._charge_refunded(snapshot["charge"], automatic)
            else:
                self._record("refund.failed", snapshot, automatic)
            return snapshot

    # --- helpers -------------------------------------------------------------------------------

    def _charge_id(self, form: dict[str, Any]) -> str:
        charge_id, intent_id = form.get("charge"), form.get("payment_intent")
        if charge_id is None and intent_id is None:
            raise errors.invalid_request(
                "One of the following params should be provided for this request: "
                "payment_intent or charge.",
                code="parameter_missing",
            )
        if charge_id is not None and intent_id is not None:
            raise errors.invalid_request(
                "You may only specify one of these parameters: charge, payment_intent.",
                param="payment_intent",
            )
        if intent_id is not None:
            if not isinstance(intent_id, str) or not intent_id:
                raise errors.invalid_request("Invalid string", param="payment_intent")
            intent = self._flow.intents.get(intent_id)
            if intent is None:
                raise errors.resource_missing("payment_intent", intent_id, "payment_intent")
            if intent["status"] != "succeeded" or not intent["latest_charge"]:
                raise errors.invalid_request(
                    f"This PaymentIntent ({intent_id}) does not have a successful charge to "
                    "refund.",
                    param="payment_intent",
                )
            return str(intent["latest_charge"])
        if not isinstance(charge_id, str) or not charge_id:
            raise errors.invalid_request("Invalid string", param="charge")
        if self._flow.charge(charge_id) is None:
            raise errors.resource_missing("charge", charge_id, "charge")
        return charge_id

    def _charge_lock(self, charge_id: str) -> threading.Lock:
        with self._lock:
            return self._charge_locks.setdefault(charge_id, threading.Lock())

    def _held(self, charge_id: str) -> int:
        """What the charge's live refunds add up to (under its lock)."""
        with self._lock:
            return sum(
                r["amount"]
                for r in self._refunds.values()
                if r["charge"] == charge_id and r["status"] in HOLDING
            )

    def _charge_refunded(self, charge_id: str, origin: Origin) -> None:
        """The charge follows its succeeded refunds; charge.refunded (under its lock)."""
        with self._lock:
            refunded = sum(
                r["amount"]
                for r in self._refunds.values()
                if r["charge"] == charge_id and r["status"] == "succeeded"
            )
        charge = self._flow.set_amount_refunded(charge_id, refunded)
        self._events.record("charge.refunded", charge, origin, created=int(self._clock()))

    def _record(
        self,
        event_type: str,
        refund: dict[str, Any],
        origin: Origin,
        previous: dict[str, Any] | None = None,
    ) -> None:
        self._events.record(
            event_type, refund, origin, created=int(self._clock()), previous=previous
        )


def _amount(raw: Any) -> int | None:
    if raw is None:
        return None
    if not isinstance(raw, str) or not raw.isdigit():
        raise errors.invalid_request(f"Invalid integer: {raw}", param="amount")
    if int(raw) < 1:
        raise errors.invalid_request("Invalid positive integer", param="amount")
    return int(raw)


def _limit(raw: Any) -> int:
    if raw is None or raw == "":
        return 10
    if not isinstance(raw, str) or not raw.isdigit() or not 1 <= int(raw) <= MAX_LIST_LIMIT:
        raise errors.invalid_request(
            f"Invalid limit: must be an integer between 1 and {MAX_LIST_LIMIT}", param="limit"
        )
    return int(raw)


def _position(cursor: Any, refunds: list[dict[str, Any]], param: str) -> int:
    for index, refund in enumerate(refunds):
        if refund["id"] == cursor:
            return index
    raise errors.resource_missing("refund", str(cursor), param)
