"""Stripe's ``expand[]`` for PaymentIntent answers: ``latest_charge`` becomes the Charge.

Stripe checks every path before it does anything (a bad path on a create creates nothing,
on a retrieve it outranks the 404) and answers, with no code and no param:

- ``expand`` that is not an array: ``Invalid array``;
- more than four levels: ``You cannot expand more than 4 levels of a property.``;
- a path it cannot follow: ``This property cannot be expanded (<path up to the segment>).``,
  and on a list (search) a top-level path gets ``You may want to try expanding
  'data.<path>' instead.``

The stand-in follows only ``latest_charge`` (``data.latest_charge`` on a search); every
deeper path, ``latest_charge.balance_transaction`` included, gets Stripe's refusal.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from stripe_standin.errors import StripeError, invalid_request

MAX_LEVELS = 4
#: What a PaymentIntent can expand here, by field.
INTENT_EXPANDABLE = frozenset({"latest_charge"})


def cannot_expand(path: str, *, hint: str | None = None) -> StripeError:
    """Stripe's 400 for a path it cannot follow."""
    message = f"This property cannot be expanded ({path})."
    if hint is not None:
        message += f" You may want to try expanding '{hint}.{path}' instead."
    return StripeError(400, "invalid_request_error", message)


def intent_paths(form: dict[str, Any], *, listed: bool = False) -> tuple[str, ...]:
    """The checked ``expand`` of a request answering one PaymentIntent (``listed``: a list
    of them, whose paths start with ``data.``); raises Stripe's refusal."""
    raw = form.get("expand")
    if raw is None:
        return ()
    if not isinstance(raw, list) or not all(isinstance(p, str) for p in raw):
        raise invalid_request("Invalid array", param="expand")
    paths: list[str] = []
    for path in raw:
        segments = path.split(".")
        if len(segments) > MAX_LEVELS:
            raise invalid_request("You cannot expand more than 4 levels of a property.")
        if listed:
            if segments[0] != "data":
                hint = "data" if segments[0] in INTENT_EXPANDABLE else None
                raise cannot_expand(segments[0], hint=hint)
            segments = segments[1:]
            prefix = "data."
        else:
            prefix = ""
        if not segments or segments[0] not in INTENT_EXPANDABLE:
            raise cannot_expand(prefix + ".".join(segments[:1]) if segments else path)
        if len(segments) > 1:
            raise cannot_expand(prefix + ".".join(segments[:2]))
        if segments[0] not in paths:
            paths.append(segments[0])
    return tuple(paths)


def expand_intent(
    intent: dict[str, Any],
    paths: tuple[str, ...],
    charge: Callable[[str], dict[str, Any] | None],
) -> dict[str, Any]:
    """The intent with each path replaced by its object (a null stays null)."""
    if not paths:
        return intent
    expanded = dict(intent)
    if "latest_charge" in paths and isinstance(intent.get("latest_charge"), str):
        expanded["latest_charge"] = charge(intent["latest_charge"])
    return expanded
