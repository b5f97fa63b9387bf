"""Decoding of Stripe's form-encoded request bodies into nested Python values.

The SDK sends ``application/x-www-form-urlencoded`` bodies whose keys carry nesting in brackets:
``metadata[payment_id]=42``, ``payment_method_types[0]=card``, ``expand[]=customer``.
"""

from __future__ import annotations

import re
from typing import Any
from urllib.parse import parse_qsl

from stripe_standin.errors import StripeError, invalid_request

_KEY = re.compile(r"^([^\[\]]+)((?:\[[^\[\]]*\])*)$")
_PART = re.compile(r"\[([^\[\]]*)\]")

HASH_PARAMS = frozenset({"metadata"})


def parse_pairs(body: str) -> list[tuple[str, str]]:
    """Split a form body into (key, value) pairs, keeping blank values (they unset in Stripe)."""
    try:
        return parse_qsl(body, keep_blank_values=True, strict_parsing=False)
    except ValueError as exc:  # pragma: no cover - parse_qsl is lenient unless strict
        raise invalid_request(f"Invalid request body: {exc}") from exc


def decode_form(body: str, hash_params: frozenset[str] = HASH_PARAMS) -> dict[str, Any]:
    """Turn a form body into a nested dict; numeric or empty brackets build lists.

    Parameters named in ``hash_params`` (metadata) always stay dicts, even with numeric keys.
    """
    root: dict[str, Any] = {}
    for key, value in parse_pairs(body):
        match = _KEY.match(key)
        if match is None:
            raise invalid_request(f"Invalid parameter name: {key}", param=key)
        path = [match.group(1), *_PART.findall(match.group(2))]
        _assign(root, path, value, key)
    return {name: value if name in hash_params else _listify(value) for name, value in root.items()}


def fingerprint(method: str, path: str, body: str) -> tuple[str, str, tuple[tuple[str, str], ...]]:
    """What makes two requests "the same parameters" for idempotency (order-insensitive)."""
    return (method.upper(), path, tuple(sorted(parse_pairs(body))))


def _assign(node: dict[str, Any], path: list[str], value: str, full_key: str) -> None:
    head, rest = path[0], path[1:]
    if not rest:
        if head == "":
            node[str(_next_index(node))] = value
        elif isinstance(node.get(head), dict):
            raise _conflict(full_key)
        else:
            node[head] = value
        return
    if head == "":
        head = str(_next_index(node))
    child = node.setdefault(head, {})
    if not isinstance(child, dict):
        raise _conflict(full_key)
    _assign(child, rest, value, full_key)


def _next_index(node: dict[str, Any]) -> int:
    return len(node)


def _listify(value: Any) -> Any:
    """Dicts whose keys are all indices become lists ordered by index."""
    if not isinstance(value, dict):
        return value
    converted = {key: _listify(child) for key, child in value.items()}
    if converted and all(key.isdigit() for key in converted):
        return [converted[key] for key in sorted(converted, key=int)]
    return converted


def _conflict(key: str) -> StripeError:
    return invalid_request(
        f"Invalid parameter: {key} was given both as a value and as a hash.", param=key
    )
