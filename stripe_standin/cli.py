"""Paying as a customer would: ``pay``, ``3ds`` and ``settle``; and as a dashboard user:
``capture`` and ``refund``.

``python -m stripe_standin pay <payment_id|pi_...> [--card pm_card_visa] [--api-base URL]``
confirms the intent with the official stripe SDK (API key from ``STRIPE_API_KEY``; a
payment id is looked up by search on ``metadata['payment_id']``). ``3ds`` completes or fails
3-D Secure of an intent in ``requires_action``, ``settle`` settles or fails the asynchronous
(ACH) payment of a ``processing`` intent; both use the stand-in's control endpoints, so they
need no API key. ``capture <payment_id|pi_...> [--amount N]`` captures a requires_capture
intent (all of it, or N minor units) and ``refund <payment_id|pi_...> [--amount N] [--reason
R]`` refunds its charge (all that is left, or N), both with the SDK and ``STRIPE_API_KEY``.
Each prints one line: the intent (or refund) id and its status, then details.

Exit status: 0 when the call was answered (for ``pay``: the intent's status is the answer),
1 when the card was declined (the intent is back in requires_payment_method), 2 for anything
else (usage, no key, no such intent, an API or connection error).
"""

from __future__ import annotations

import argparse
import os
import sys
import uuid
from collections.abc import Sequence
from typing import Any, TextIO

import stripe

from stripe_standin.client import StandinAdmin, StandinAdminError
from stripe_standin.config import DEFAULT_HOST, DEFAULT_PORT

API_KEY_ENV = "STRIPE_API_KEY"
API_BASE_ENV = "STRIPE_API_BASE"
DEFAULT_API_BASE = f"http://{DEFAULT_HOST}:{DEFAULT_PORT}"
DECLINED = 1
FAILED = 2


class CommandError(Exception):
    """A failure to report in one line on stderr (exit status 2)."""


def build_parser() -> argparse.ArgumentParser:
    """The parser of the customer subcommands."""
    parser = argparse.ArgumentParser(
        prog="python -m stripe_standin",
        description="Act as the customer of a PaymentIntent (run without a subcommand to "
        "start the stand-in server).",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    base_help = f"API address (default ${API_BASE_ENV} or {DEFAULT_API_BASE})"

    pay = commands.add_parser(
        "pay", help=f"confirm a PaymentIntent with a test card (API key from ${API_KEY_ENV})"
    )
    pay.add_argument("target", help="payment id (metadata payment_id) or pi_... id")
    pay.add_argument("--card", default="pm_card_visa", help="test PaymentMethod token")
    pay.add_argument("--api-base", default=None, help=base_help)

    capture = commands.add_parser(
        "capture", help=f"capture a requires_capture PaymentIntent (API key from ${API_KEY_ENV})"
    )
    capture.add_argument("target", help="payment id (metadata payment_id) or pi_... id")
    capture.add_argument("--amount", type=_positive, default=None, help="minor units to capture")
    capture.add_argument("--api-base", default=None, help=base_help)

    refund = commands.add_parser(
        "refund", help=f"refund a succeeded PaymentIntent (API key from ${API_KEY_ENV})"
    )
    refund.add_argument("target", help="payment id (metadata payment_id) or pi_... id")
    refund.add_argument("--amount", type=_positive, default=None, help="minor units to refund")
    refund.add_argument(
        "--reason", choices=("duplicate", "fraudulent", "requested_by_customer"), default=None
    )
    refund.add_argument("--api-base", default=None, help=base_help)

    for name, what in (
        ("3ds", "complete (--succeed) or fail (--fail) 3-D Secure of a requires_action intent"),
        ("settle", "settle (--succeed) or fail (--fail) the ACH payment of a processing intent"),
    ):
        command = commands.add_parser(name, help=what)
        command.add_argument("target", help="payment id (metadata payment_id) or pi_... id")
        outcome = command.add_mutually_exclusive_group(required=True)
        outcome.add_argument("--succeed", dest="succeed", action="store_true")
        outcome.add_argument("--fail", dest="succeed", action="store_false")
        command.add_argument("--api-base", default=None, help=base_help)
    return parser


def main(
    argv: Sequence[str],
    *,
    environ: dict[str, str] | None = None,
    out: TextIO = sys.stdout,
    err: TextIO = sys.stderr,
) -> int:
    """Run one subcommand; answers the exit status."""
    environ = dict(os.environ) if environ is None else environ
    args = build_parser().parse_args(list(argv))
    api_base = (args.api_base or environ.get(API_BASE_ENV) or DEFAULT_API_BASE).rstrip("/")
    try:
        if args.command == "pay":
            status, line = _pay(args.target, args.card, api_base, environ.get(API_KEY_ENV))
        elif args.command in ("capture", "refund"):
            status, line = _dashboard(args, api_base, environ.get(API_KEY_ENV))
        else:
            status, line = _control(args.command, args.target, api_base, succeed=args.succeed)
    except CommandError as exc:
        err.write(f"{args.command}: {exc}\n")
        return FAILED
    out.write(line + "\n")
    return status


def _pay(target: str, card: str, api_base: str, api_key: str | None) -> tuple[int, str]:
    if not api_key:
        raise CommandError(f"set {API_KEY_ENV} to the API key")
    client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=2)
    try:
        intent_id = target if target.startswith("pi_") else _search(client, target)
        key = f"stripe-standin-pay:{intent_id}:{uuid.uuid4()}"
        intent = client.v1.payment_intents.confirm(
            intent_id, {"payment_method": card}, {"idempotency_key": key}
        )
    except stripe.CardError as exc:
        return DECLINED, _declined_line(exc)
    except stripe.StripeError as exc:
        raise CommandError(_stripe_problem(exc)) from None
    return 0, describe(intent.to_dict())


def _dashboard(args: argparse.Namespace, api_base: str, api_key: str | None) -> tuple[int, str]:
    if not api_key:
        raise CommandError(f"set {API_KEY_ENV} to the API key")
    client = stripe.StripeClient(api_key, base_addresses={"api": api_base}, max_network_retries=2)
    target = str(args.target)
    try:
        intent_id = target if target.startswith("pi_") else _search(client, target)
        key = f"stripe-standin-{args.command}:{intent_id}:{uuid.uuid4()}"
        if args.command == "capture":
            params: Any = {} if args.amount is None else {"amount_to_capture": args.amount}
            intent = client.v1.payment_intents.capture(intent_id, params, {"idempotency_key": key})
            return 0, describe(intent.to_dict())
        wanted: Any = {"payment_intent": intent_id}
        if args.amount is not None:
            wanted["amount"] = args.amount
        if args.reason is not None:
            wanted["reason"] = args.reason
        refund = client.v1.refunds.create(wanted, {"idempotency_key": key})
    except stripe.StripeError as exc:
        raise CommandError(_stripe_problem(exc)) from None
    return 0, (
        f"{refund.id} {refund.status} amount={refund.amount} {refund.currency} "
        f"payment_intent={refund.payment_intent}"
    )


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _search(client: stripe.StripeClient, payment_id: str) -> str:
    query = f"metadata['payment_id']:'{payment_id}'"
    found = client.v1.payment_intents.search({"query": query, "limit": 10}).data
    if not found:
        raise CommandError(
            f"no PaymentIntent has metadata payment_id {payment_id!r} (yet: search lags "
            "behind creation)"
        )
    return str(found[0].id)  # newest first


def _control(command: str, target: str, api_base: str, *, succeed: bool) -> tuple[int, str]:
    admin = StandinAdmin(api_base)
    try:
        intent_id = target if target.startswith("pi_") else _by_metadata(admin, target)
        if command == "3ds":
            intent = admin.authenticate(intent_id, succeed=succeed)
        else:
            intent = admin.settle(intent_id, succeed=succeed)
    except StandinAdminError as exc:
        raise CommandError(exc.message) from None
    except OSError as exc:
        raise CommandError(f"cannot reach the stand-in at {api_base}: {exc}") from None
    return 0, describe(intent)


def _by_metadata(admin: StandinAdmin, payment_id: str) -> str:
    found = admin.intents_with_metadata("payment_id", payment_id)
    if not found:
        raise CommandError(f"no PaymentIntent has metadata payment_id {payment_id!r}")
    return str(found[-1]["id"])  # the newest


def describe(intent: dict[str, Any]) -> str:
    """One line: id, status and what matters about it."""
    status = intent["status"]
    parts = [str(intent["id"]), str(status)]
    if status in ("succeeded", "requires_capture"):
        received = intent.get("amount_received") or intent.get("amount_capturable")
        parts.append(f"amount={received} {intent.get('currency')}")
        parts.append(f"charge={intent.get('latest_charge')}")
    elif status == "requires_action":
        parts.append(f"(3-D Secure: python -m stripe_standin 3ds {intent['id']} --succeed|--fail)")
    elif status == "processing":
        parts.append(f"(python -m stripe_standin settle {intent['id']} --succeed|--fail)")
    elif status == "requires_payment_method" and intent.get("last_payment_error"):
        error = intent["last_payment_error"]
        parts.append(f"failed: {_reason(error)}: {error.get('message')}")
    elif status == "canceled":
        parts.append(f"reason={intent.get('cancellation_reason')}")
    return " ".join(parts)


def _reason(error: dict[str, Any]) -> str:
    code, decline = error.get("code"), error.get("decline_code")
    return f"{code}/{decline}" if decline and decline != code else str(code)


def _declined_line(exc: stripe.CardError) -> str:
    body = exc.json_body if isinstance(exc.json_body, dict) else {}
    error = body.get("error", {}) if isinstance(body, dict) else {}
    intent = error.get("payment_intent") if isinstance(error, dict) else None
    if isinstance(intent, dict):
        return describe(intent)
    return f"declined: {exc.code}: {exc.user_message or exc}"


def _stripe_problem(exc: stripe.StripeError) -> str:
    status = f"{exc.http_status} " if exc.http_status else ""
    code = f" ({exc.code})" if exc.code else ""
    return f"{status}{type(exc).__name__}{code}: {exc.user_message or exc}"
