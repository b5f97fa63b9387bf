"""Stripe-Signature verification with the official SDK: the receiver's only use of `stripe`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from stripe import SignatureVerificationError, WebhookSignature

# Stripe's own default: a delivery signed longer ago than this is refused as a replay.
TOLERANCE_SECONDS = 300


class Rejected(Exception):  # an outcome, not a failure of ours
    """The request is refused with 400; `reason` is its metrics label, `message` its answer.

    Neither ever quotes the payload or the header."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason
        self.message = message


@dataclass(frozen=True)
class Event:
    id: str
    type: str
    livemode: bool
    # The body exactly as signed: what gets stored.
    text: str


def verify(
    body: bytes, header: str | None, secrets: Sequence[str], tolerance: int = TOLERANCE_SECONDS
) -> str:
    """The body as text, if `header` signs it with any of `secrets` within `tolerance`.

    Raises Rejected: 'stale' when a secret's signature matches but too long ago (the SDK
    checks the time only after a match), else 'signature'."""
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        # Stripe signs UTF-8 JSON: nothing else can carry its signature.
        raise Rejected("signature", "invalid signature") from None
    if not header:
        raise Rejected("signature", "missing Stripe-Signature header")
    stale = False
    for secret in secrets:
        try:
            WebhookSignature.verify_header(text, header, secret, tolerance)
        except SignatureVerificationError as exc:
            # Its message holds the timestamp at most; the exception itself holds the
            # header and payload, so only this test of its text is kept.
            stale = stale or str(exc).startswith("Timestamp outside the tolerance zone")
            continue
        return text
    if stale:
        raise Rejected("stale", "signature timestamp outside the tolerance")
    raise Rejected("signature", "invalid signature")


def parse(text: str, livemode: bool) -> Event:
    """The verified body as an event of the API key's mode.

    Raises Rejected: 'malformed' for anything that is not an event object, 'livemode'
    for an event of the other mode (a test event at a live endpoint, or the reverse)."""
    try:
        value: Any = json.loads(text)
    except ValueError:
        raise Rejected("malformed", "the body is not JSON") from None
    if not isinstance(value, dict) or value.get("object") != "event":
        raise Rejected("malformed", "the body is not a Stripe event")
    event_id, event_type, mode = value.get("id"), value.get("type"), value.get("livemode")
    if not isinstance(event_id, str) or not isinstance(event_type, str):
        raise Rejected("malformed", "the event needs an id and a type")
    if not isinstance(mode, bool):
        raise Rejected("malformed", "the event needs livemode")
    if mode != livemode:
        raise Rejected(
            "livemode",
            "a live event at a test endpoint" if mode else "a test event at a live endpoint",
        )
    return Event(id=event_id, type=event_type[:255], livemode=mode, text=text)
