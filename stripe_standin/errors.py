"""Stripe-shaped error bodies and the exception that carries them through the stand-in.

Every error the stand-in answers looks like Stripe's v1 errors:
``{"error": {"type", "code", "message", "param", "doc_url"?, "request_log_url"?}}``.
The official SDK picks its exception class from the HTTP status (401 -> AuthenticationError,
402 -> CardError, 429 -> RateLimitError, 400/404 -> InvalidRequestError or IdempotencyError,
anything else -> APIError), so the status codes here are the ones Stripe uses.
"""

from __future__ import annotations

import re
from typing import Any

DOC_URL_BASE = "https://stripe.com/docs/error-codes/"
SUPPORT_HINT = "Please see https://stripe.com/docs or we can help at https://support.stripe.com/."

_KEY_PREFIX = re.compile(r"^(?:[a-z]{2}_(?:test|live)_|[A-Za-z]+_)")


class StripeError(Exception):
    """An error answered to the client as a Stripe error body with an HTTP status."""

    def __init__(
        self,
        status: int,
        error_type: str,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.error_type = error_type
        self.message = message
        self.code = code
        self.param = param
        self.extra = dict(extra or {})
        self.headers = dict(headers or {})

    def body(self, request_id: str | None = None, created: int | None = None) -> dict[str, Any]:
        """Return the JSON body Stripe would send for this error."""
        error: dict[str, Any] = {
            "type": self.error_type,
            "code": self.code,
            "message": self.message,
            "param": self.param,
        }
        if self.code:
            error["doc_url"] = DOC_URL_BASE + self.code.replace("_", "-")
        error.update(self.extra)
        if request_id:
            error["request_log_url"] = request_log_url(request_id, created)
        return {"error": error}


def request_log_url(request_id: str, created: int | None = None) -> str:
    """Dashboard link Stripe attaches to errors (test mode)."""
    suffix = f"?t={created}" if created is not None else ""
    return f"https://dashboard.stripe.com/test/logs/{request_id}{suffix}"


def mask_api_key(key: str) -> str:
    """Mask a key the way Stripe does: known prefix, asterisks, and the last four characters."""
    match = _KEY_PREFIX.match(key)
    prefix = match.group(0) if match else ""
    rest = key[len(prefix) :]
    if len(rest) <= 4:
        return prefix + "*" * len(rest)
    return prefix + "*" * (len(rest) - 4) + rest[-4:]


# --- authentication -----------------------------------------------------------------------------


def missing_api_key() -> StripeError:
    """401 for a request without any API key."""
    return StripeError(
        401,
        "invalid_request_error",
        "You did not provide an API key. You need to provide your API key in the Authorization "
        "header, using Bearer auth (e.g. 'Authorization: Bearer YOUR_SECRET_KEY'). See "
        "https://stripe.com/docs/api#authentication for details, or we can help at "
        "https://support.stripe.com/.",
    )


def invalid_api_key(key: str) -> StripeError:
    """401 for a key that is not accepted; only the masked key is ever echoed."""
    return StripeError(
        401, "invalid_request_error", f"Invalid API Key provided: {mask_api_key(key)}"
    )


# --- request validation -------------------------------------------------------------------------


def invalid_request(
    message: str, *, param: str | None = None, code: str | None = None, status: int = 400
) -> StripeError:
    """A generic ``invalid_request_error`` (400 unless told otherwise)."""
    return StripeError(status, "invalid_request_error", message, code=code, param=param)


def missing_param(param: str) -> StripeError:
    """400 for a required parameter that was not sent."""
    return invalid_request(
        f"Missing required param: {param}.", param=param, code="parameter_missing"
    )


def unknown_param(param: str) -> StripeError:
    """400 for a parameter the endpoint does not know."""
    return invalid_request(
        f"Received unknown parameter: {param}", param=param, code="parameter_unknown"
    )


def resource_missing(object_name: str, object_id: str, param: str) -> StripeError:
    """404 for an object id that does not exist."""
    return invalid_request(
        f"No such {object_name}: '{object_id}'",
        param=param,
        code="resource_missing",
        status=404,
    )


def unrecognized_url(method: str, path: str) -> StripeError:
    """404 for a path the stand-in does not serve."""
    return invalid_request(
        f"Unrecognized request URL ({method}: {path}). {SUPPORT_HINT}", status=404
    )


# --- idempotency --------------------------------------------------------------------------------


def idempotency_mismatch(key: str) -> StripeError:
    """400 for an idempotency key reused with different parameters."""
    return StripeError(
        400,
        "idempotency_error",
        "Keys for idempotent requests can only be used with the same parameters they were "
        f"first used with. Try using a key other than '{key}' if you meant to execute a "
        "different request.",
    )


def idempotency_in_flight(key: str) -> StripeError:
    """409 while the first request with this idempotency key is still being processed."""
    return StripeError(
        409,
        "idempotency_error",
        "There is currently another in-progress request using this Idempotent Key (that "
        "probably means you submitted twice, and the other request is still going through): "
        f"{key}. Please try again later.",
        code="idempotency_key_in_use",
    )


def idempotency_key_too_long() -> StripeError:
    """400 for an idempotency key over Stripe's 255 character limit."""
    return invalid_request(
        "Invalid Idempotency-Key: keys can be at most 255 characters long.",
        param="Idempotency-Key",
    )


# --- injected transient failures ----------------------------------------------------------------


def api_error() -> StripeError:
    """500 as Stripe answers an internal failure."""
    return StripeError(
        500,
        "api_error",
        "Sorry, something went wrong. We've already been notified of the problem, but if you "
        "need any help, you can reach us at https://support.stripe.com/contact.",
    )


def rate_limited() -> StripeError:
    """429 as Stripe answers too many requests."""
    return invalid_request(
        "Request rate limit exceeded. Learn more about rate limits here "
        "https://stripe.com/docs/rate-limits.",
        code="rate_limit",
        status=429,
    )
