"""Start-up configuration from command-line flags and ``STANDIN_*`` environment variables.

Flags win over environment variables, which win over the defaults. The webhook signing
secret is never a flag (argv is visible to every user of the machine): it comes from
``STANDIN_WEBHOOK_SECRET`` or from the file named by ``--webhook-secret-file``.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import secrets
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from stripe_standin.faults import ConfigError, FaultSettings
from stripe_standin.flow import DEFAULT_AUTHORIZATION_WINDOW
from stripe_standin.webhooks import WebhookSettings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 12111
# A client that sends nothing for this long is dropped (its thread with it). Well above any
# pause between a test's requests on one pooled connection, so those are never cut.
DEFAULT_IDLE_TIMEOUT = 60.0
ENV_PREFIX = "STANDIN_"
SECRET_ENV = ENV_PREFIX + "WEBHOOK_SECRET"


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps the server reachable from this machine only."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name: it could resolve anywhere


@dataclass(frozen=True)
class StandinConfig:
    """Everything the server needs to start."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    port_file: Path | None = None
    api_key: str | None = None
    faults: FaultSettings = field(default_factory=FaultSettings)
    seed: int = 0
    quiet: bool = False
    allow_remote: bool = False
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT
    webhooks: WebhookSettings = field(default_factory=WebhookSettings)
    webhook_secret: str | None = field(default=None, repr=False)
    authorization_window: float = DEFAULT_AUTHORIZATION_WINDOW
    refunds_pending: bool = False

    def __post_init__(self) -> None:
        if self.webhooks.url is not None and not self.webhook_secret:
            raise ConfigError(
                "--webhook-url needs a signing secret: set "
                f"{SECRET_ENV} or pass --webhook-secret-file"
            )
        # The admin endpoints have no authentication: whoever reaches them can script
        # answers, read every intent and reset the state.
        if not self.allow_remote and not is_loopback(self.host):
            raise ConfigError(
                f"refusing to bind {self.host!r}, not a loopback address: the admin endpoints "
                "(/_standin/) have no authentication; pass --allow-remote "
                f"(or {ENV_PREFIX}ALLOW_REMOTE=1) to bind it anyway"
            )
        if not self.authorization_window > 0:
            raise ConfigError(
                f"authorization_window must be positive, got {self.authorization_window}"
            )
        if not self.idle_timeout > 0:
            raise ConfigError(f"idle_timeout must be positive, got {self.idle_timeout}")


def _rate(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {text}")
    return value


def _non_negative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def _non_negative_float(text: str) -> float:
    value = float(text)
    if not value >= 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {text}")
    return value


def _seconds(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text}")
    return value


def _port(text: str) -> int:
    value = int(text)
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"must be a port number (0 picks a free one), got {text}")
    return value


def _flag(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("", "0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected a boolean, got {text!r}")


# (flag, destination, type, help); the env name is STANDIN_ + destination upper-cased.
_OPTIONS = (
    (
        "--host",
        "host",
        str,
        f"address to bind (default {DEFAULT_HOST}; loopback only, see --allow-remote)",
    ),
    (
        "--allow-remote",
        "allow_remote",
        _flag,
        "allow a --host that is not loopback (the admin endpoints have no authentication)",
    ),
    ("--port", "port", _port, f"port to bind, 0 picks a free one (default {DEFAULT_PORT})"),
    ("--port-file", "port_file", Path, "write the bound port to this file once listening"),
    ("--api-key", "api_key", str, "accept only this key (default: any key starting sk_test_)"),
    ("--latency-ms", "latency_ms", _non_negative_int, "delay before each API answer"),
    ("--fail-5xx", "fail_5xx", _rate, "fraction of API requests answered 500 api_error"),
    ("--fail-429", "fail_429", _rate, "fraction of API requests answered 429 rate limit"),
    ("--drop", "drop", _rate, "fraction of API requests whose connection is closed at once"),
    (
        "--lose-response",
        "lose_response",
        _rate,
        "fraction of API requests processed and stored, then closed without an answer",
    ),
    (
        "--create-then-5xx",
        "create_then_5xx",
        _rate,
        "fraction of API requests whose create stores the intent, then answers 500",
    ),
    (
        "--save-5xx",
        "save_5xx",
        _flag,
        "save a 5xx of a create that began executing against its idempotency key and replay "
        "it, as Stripe does (default true; false releases the key)",
    ),
    (
        "--search-lag-ms",
        "search_lag_ms",
        _non_negative_int,
        "how long a new intent stays invisible to search (Stripe's is eventually consistent)",
    ),
    ("--seed", "seed", int, "seed of the fault random sequence (default: random)"),
    ("--quiet", "quiet", _flag, "no per-request log lines"),
    ("--webhook-url", "webhook_url", str, "POST every event to this endpoint, signed"),
    (
        "--webhook-secret-file",
        "webhook_secret_file",
        Path,
        f"file holding the webhook signing secret (or set {SECRET_ENV}; never a flag)",
    ),
    (
        "--webhook-enabled",
        "webhook_enabled",
        _flag,
        "deliver webhooks (default true; false keeps events for /v1/events only)",
    ),
    (
        "--webhook-retry-base",
        "webhook_retry_base",
        _seconds,
        "seconds before the first retry of a failed delivery, doubling after each (default 5)",
    ),
    (
        "--webhook-max-attempts",
        "webhook_max_attempts",
        _positive_int,
        "attempts per delivery before giving up (default 4)",
    ),
    (
        "--webhook-max-age",
        "webhook_max_age",
        _seconds,
        "seconds after the event a delivery is still retried (default 3 days)",
    ),
    (
        "--webhook-timeout",
        "webhook_timeout",
        _seconds,
        "seconds an endpoint may take to answer (default 10)",
    ),
    ("--webhook-duplicate", "webhook_duplicate", _rate, "fraction of events delivered twice"),
    ("--webhook-drop", "webhook_drop", _rate, "fraction of events never delivered"),
    (
        "--webhook-bad-signature",
        "webhook_bad_signature",
        _rate,
        "fraction of events whose first attempt is signed with a wrong secret",
    ),
    (
        "--webhook-reorder-max",
        "webhook_reorder_max",
        _non_negative_float,
        "each delivery waits a random 0..N seconds first, so events arrive out of order",
    ),
    (
        "--authorization-window",
        "authorization_window",
        _seconds,
        "seconds an uncaptured card authorisation (capture_method=manual) stays capturable "
        "before Stripe cancels it (default 7 days)",
    ),
    (
        "--refunds-pending",
        "refunds_pending",
        _flag,
        "new refunds stay pending until settled through the control API (default false: "
        "they succeed at once)",
    ),
    (
        "--idle-timeout",
        "idle_timeout",
        _seconds,
        "seconds a connection may send nothing before it is closed "
        f"(default {DEFAULT_IDLE_TIMEOUT:g})",
    ),
)


def env_name(dest: str) -> str:
    """Environment variable that sets option ``dest``, e.g. ``STANDIN_FAIL_5XX``."""
    return ENV_PREFIX + dest.upper()


def build_parser() -> argparse.ArgumentParser:
    """The ``python -m stripe_standin`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="python -m stripe_standin",
        description="Local stand-in for the Stripe PaymentIntents API, with fault injection. "
        "Every option can also be set with STANDIN_<OPTION> (e.g. STANDIN_PORT). "
        "To act as the customer or a dashboard user instead: python -m stripe_standin "
        "pay|3ds|settle|capture|refund --help.",
    )
    for flag, dest, kind, help_text in _OPTIONS:
        if kind is _flag:
            parser.add_argument(
                flag, dest=dest, type=kind, nargs="?", const=True, default=None, help=help_text
            )
        else:
            parser.add_argument(flag, dest=dest, type=kind, default=None, help=help_text)
    return parser


def load_config(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> StandinConfig:
    """Read flags then ``STANDIN_*`` variables; exits with usage on invalid input like argparse."""
    environ = os.environ if environ is None else environ
    parser = build_parser()
    args = parser.parse_args(argv)
    for _flag_name, dest, kind, _help in _OPTIONS:
        raw = environ.get(env_name(dest), "")
        if getattr(args, dest) is None and raw != "":
            try:
                setattr(args, dest, kind(raw))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"{env_name(dest)}: {exc}")
    try:
        faults = FaultSettings(
            latency_ms=args.latency_ms or 0,
            drop=args.drop or 0.0,
            fail_5xx=args.fail_5xx or 0.0,
            fail_429=args.fail_429 or 0.0,
            lose_response=args.lose_response or 0.0,
            create_then_5xx=args.create_then_5xx or 0.0,
            save_5xx=True if args.save_5xx is None else bool(args.save_5xx),
            search_lag_ms=args.search_lag_ms or 0,
        )
        webhooks = _webhook_settings(args)
        secret = _webhook_secret(args.webhook_secret_file, environ)
    except ConfigError as exc:
        parser.error(str(exc))
    try:
        return StandinConfig(
            webhooks=webhooks,
            webhook_secret=secret,
            host=args.host or DEFAULT_HOST,
            port=DEFAULT_PORT if args.port is None else args.port,
            port_file=args.port_file,
            api_key=args.api_key or None,
            faults=faults,
            seed=secrets.randbelow(2**31) if args.seed is None else args.seed,
            quiet=bool(args.quiet),
            allow_remote=bool(args.allow_remote),
            idle_timeout=args.idle_timeout or DEFAULT_IDLE_TIMEOUT,
            authorization_window=args.authorization_window or DEFAULT_AUTHORIZATION_WINDOW,
            refunds_pending=bool(args.refunds_pending),
        )
    except ConfigError as exc:
        parser.error(str(exc))


def _webhook_settings(args: argparse.Namespace) -> WebhookSettings:
    defaults = WebhookSettings()
    return WebhookSettings(
        url=args.webhook_url or None,
        enabled=True if args.webhook_enabled is None else bool(args.webhook_enabled),
        retry_base_seconds=args.webhook_retry_base or defaults.retry_base_seconds,
        max_attempts=args.webhook_max_attempts or defaults.max_attempts,
        max_age_seconds=args.webhook_max_age or defaults.max_age_seconds,
        timeout_seconds=args.webhook_timeout or defaults.timeout_seconds,
        duplicate=args.webhook_duplicate or 0.0,
        drop=args.webhook_drop or 0.0,
        bad_signature=args.webhook_bad_signature or 0.0,
        reorder_max_seconds=args.webhook_reorder_max or 0.0,
    )


def _webhook_secret(path: Path | None, environ: Mapping[str, str]) -> str | None:
    """The signing secret: the file's first line if given, else the environment."""
    if path is not None:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            message = f"cannot read the webhook secret file {path}: {exc.strerror}"
            raise ConfigError(message) from None
        secret = text.strip()
        if not secret:
            raise ConfigError(f"the webhook secret file {path} is empty")
        return secret
    return environ.get(SECRET_ENV, "").strip() or None
