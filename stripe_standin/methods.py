"""Stripe's test PaymentMethod tokens the stand-in knows, and what confirming each one does.

From Stripe's testing documentation: ``pm_card_*`` tokens for cards that succeed, decline
(``card_declined`` with a ``decline_code``, or ``expired_card``, ``incorrect_cvc``,
``processing_error``) or require 3-D Secure authentication; ``pm_usBankAccount_*`` tokens for
ACH Direct Debit, which is asynchronous: the intent stays ``processing`` until the payment
settles. In Stripe's test mode ACH settles by itself after a while; in the stand-in a control
call settles it (``POST /_standin/payment_intents/{id}/settle``), and the failing tokens name
the reason used when it is settled as failed.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


class Outcome(enum.Enum):
    """What a confirmation with the method does."""

    SUCCEED = "succeed"
    DECLINE = "decline"
    AUTHENTICATE = "authenticate"  # requires_action until 3-D Secure completes or fails
    ASYNC = "async"  # processing until settled


@dataclass(frozen=True)
class Decline:
    """Why a charge failed, as Stripe reports it on the error and ``last_payment_error``."""

    code: str
    decline_code: str | None
    message: str


@dataclass(frozen=True)
class TestMethod:
    """One test token."""

    token: str
    type: str  # "card" or "us_bank_account"
    outcome: Outcome
    brand: str = "visa"
    last4: str = "4242"
    funding: str = "credit"
    decline: Decline | None = None  # for DECLINE; for AUTHENTICATE/ASYNC: after success/settle


GENERIC = Decline("card_declined", "generic_decline", "Your card was declined.")
INSUFFICIENT = Decline("card_declined", "insufficient_funds", "Your card has insufficient funds.")
LOST = Decline("card_declined", "lost_card", "Your card was declined.")
STOLEN = Decline("card_declined", "stolen_card", "Your card was declined.")
FRAUDULENT = Decline("card_declined", "fraudulent", "Your card was declined.")
EXPIRED = Decline("expired_card", "expired_card", "Your card has expired.")
INCORRECT_CVC = Decline("incorrect_cvc", "incorrect_cvc", "Your card's security code is incorrect.")
PROCESSING = Decline(
    "processing_error",
    "processing_error",
    "An error occurred while processing your card. Try again in a little bit.",
)
AUTHENTICATION_FAILURE_MESSAGE = (
    "The provided PaymentMethod has failed authentication. You can provide payment_method_data "
    "or a new PaymentMethod to attempt to fulfill this PaymentIntent again."
)


def _bank(reason: str, message: str) -> Decline:
    return Decline(reason, None, message)


BANK_FAILED = _bank("payment_method_provider_decline", "The customer's bank declined the debit.")

_S, _D, _A, _P = Outcome.SUCCEED, Outcome.DECLINE, Outcome.AUTHENTICATE, Outcome.ASYNC

_METHODS = (
    TestMethod("pm_card_visa", "card", _S, "visa", "4242"),
    TestMethod("pm_card_visa_debit", "card", _S, "visa", "5556", "debit"),
    TestMethod("pm_card_mastercard", "card", _S, "mastercard", "4444"),
    TestMethod("pm_card_mastercard_debit", "card", _S, "mastercard", "8210", "debit"),
    TestMethod("pm_card_mastercard_prepaid", "card", _S, "mastercard", "5100", "prepaid"),
    TestMethod("pm_card_amex", "card", _S, "amex", "8431"),
    TestMethod("pm_card_discover", "card", _S, "discover", "1117"),
    TestMethod("pm_card_diners", "card", _S, "diners", "0004"),
    TestMethod("pm_card_jcb", "card", _S, "jcb", "0505"),
    TestMethod("pm_card_unionpay", "card", _S, "unionpay", "0005"),
    TestMethod("pm_card_chargeDeclined", "card", _D, "visa", "0002", decline=GENERIC),
    TestMethod("pm_card_visa_chargeDeclined", "card", _D, "visa", "0002", decline=GENERIC),
    TestMethod(
        "pm_card_chargeDeclinedInsufficientFunds", "card", _D, "visa", "9995", decline=INSUFFICIENT
    ),
    TestMethod(
        "pm_card_visa_chargeDeclinedInsufficientFunds",
        "card",
        _D,
        "visa",
        "9995",
        decline=INSUFFICIENT,
    ),
    TestMethod("pm_card_chargeDeclinedLostCard", "card", _D, "visa", "9987", decline=LOST),
    TestMethod("pm_card_visa_chargeDeclinedLostCard", "card", _D, "visa", "9987", decline=LOST),
    TestMethod("pm_card_chargeDeclinedStolenCard", "card", _D, "visa", "9979", decline=STOLEN),
    TestMethod("pm_card_visa_chargeDeclinedStolenCard", "card", _D, "visa", "9979", decline=STOLEN),
    TestMethod("pm_card_chargeDeclinedFraudulent", "card", _D, "visa", "0019", decline=FRAUDULENT),
    TestMethod("pm_card_chargeDeclinedExpiredCard", "card", _D, "visa", "0069", decline=EXPIRED),
    TestMethod(
        "pm_card_chargeDeclinedIncorrectCvc", "card", _D, "visa", "0127", decline=INCORRECT_CVC
    ),
    TestMethod(
        "pm_card_chargeDeclinedProcessingError", "card", _D, "visa", "0119", decline=PROCESSING
    ),
    TestMethod("pm_card_authenticationRequired", "card", _A, "visa", "3184"),
    TestMethod("pm_card_threeDSecure2Required", "card", _A, "visa", "3220"),
    TestMethod(
        "pm_card_authenticationRequiredChargeDeclinedInsufficientFunds",
        "card",
        _A,
        "visa",
        "9235",
        decline=INSUFFICIENT,
    ),
    TestMethod("pm_usBankAccount_success", "us_bank_account", _P, "", "6789", decline=BANK_FAILED),
    TestMethod(
        "pm_usBankAccount_accountClosed",
        "us_bank_account",
        _P,
        "",
        "1113",
        decline=_bank("account_closed", "The customer's bank account has been closed."),
    ),
    TestMethod(
        "pm_usBankAccount_insufficientFunds",
        "us_bank_account",
        _P,
        "",
        "2227",
        decline=_bank("insufficient_funds", "The customer's account has insufficient funds."),
    ),
    TestMethod(
        "pm_usBankAccount_debitNotAuthorized",
        "us_bank_account",
        _P,
        "",
        "4448",
        decline=_bank(
            "debit_not_authorized",
            "The customer notified their bank that this payment was unauthorized.",
        ),
    ),
)

TEST_METHODS: dict[str, TestMethod] = {method.token: method for method in _METHODS}


def lookup(token: str) -> TestMethod | None:
    """The test method behind a token, or ``None`` (Stripe answers resource_missing)."""
    return TEST_METHODS.get(token)


def success_tokens() -> list[str]:
    """Card tokens whose confirmation succeeds at once."""
    return [m.token for m in _METHODS if m.outcome is Outcome.SUCCEED]
