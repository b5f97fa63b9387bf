"""Worker settings, read and validated from the environment once at start."""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from common.dburl import ConninfoError, check_conninfo
from common.envconfig import ConfigError, env_int, env_log_level

# The shortest retention the database's cleaner accepts: the default of
# payments.config.min_job_retention (schema/deploy/worker_api.sql).
MIN_JOB_RETENTION = 3600.0


@dataclass(frozen=True)
class Config:
    database_url: str = field(repr=False)
    stripe_api_key: str = field(repr=False)
    stripe_api_base: str | None
    payment_currency: str
    db_min_conns: int
    db_max_conns: int
    concurrency: int
    poll_interval: float
    stripe_connect_timeout: float
    stripe_read_timeout: float
    stripe_network_retries: int
    log_level: str
    worker_id: str
    rescue_after: float
    completed_retention: float
    discarded_retention: float
    reconcile_after: float = 600.0
    reconcile_rate: float = 5.0
    backfill_interval: float = 300.0

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Config:
        env = os.environ if env is None else env
        db_min = env_int(env, "DB_MIN_CONNS", 1, minimum=1)
        db_max = env_int(env, "DB_MAX_CONNS", 4, minimum=1)
        if db_min > db_max:
            raise ConfigError(f"DB_MIN_CONNS ({db_min}) must not exceed DB_MAX_CONNS ({db_max})")
        config = cls(
            database_url=_database_url(env),
            stripe_api_key=_stripe_api_key(env),
            stripe_api_base=_stripe_api_base(env),
            payment_currency=_currency(env),
            db_min_conns=db_min,
            db_max_conns=db_max,
            concurrency=env_int(env, "WORKER_CONCURRENCY", 10, minimum=1, maximum=1000),
            poll_interval=_float(env, "WORKER_POLL_INTERVAL", 1.0, minimum=0.05, maximum=60),
            stripe_connect_timeout=_float(
                env, "STRIPE_CONNECT_TIMEOUT", 5.0, minimum=0.1, maximum=60
            ),
            stripe_read_timeout=_float(env, "STRIPE_READ_TIMEOUT", 30.0, minimum=0.1, maximum=80),
            stripe_network_retries=env_int(env, "STRIPE_NETWORK_RETRIES", 2, minimum=0, maximum=5),
            log_level=env_log_level(env),
            worker_id=_worker_id(env),
            rescue_after=_float(env, "RESCUE_AFTER", 900.0, minimum=60, maximum=86400),
            completed_retention=_float(
                env,
                "CLEANER_COMPLETED_RETENTION",
                86400.0,
                minimum=MIN_JOB_RETENTION,
                maximum=90 * 86400,
            ),
            discarded_retention=_float(
                env,
                "CLEANER_DISCARDED_RETENTION",
                7 * 86400.0,
                minimum=MIN_JOB_RETENTION,
                maximum=365 * 86400,
            ),
            reconcile_after=_float(env, "RECONCILE_AFTER", 600.0, minimum=1, maximum=30 * 86400),
            # Stripe allows 100 reads a second in live mode, 25 in test mode; this stays
            # far below either, events and creates having their share.
            reconcile_rate=_float_value(env, "RECONCILE_RATE", 5.0, minimum=0.1, maximum=20),
            backfill_interval=_float(env, "BACKFILL_INTERVAL", 300.0, minimum=10, maximum=86400),
        )
        # The time-based rescue must never take a job from a worker that is
        # still, legitimately, waiting on Stripe.
        longest_call = (config.stripe_network_retries + 1) * (
            config.stripe_connect_timeout + config.stripe_read_timeout + 1.0
        )
        if config.rescue_after < 2 * longest_call:
            raise ConfigError(
                f"RESCUE_AFTER ({config.rescue_after:g} s) must be at least twice the longest "
                f"Stripe call: (STRIPE_NETWORK_RETRIES + 1) x (STRIPE_CONNECT_TIMEOUT + "
                f"STRIPE_READ_TIMEOUT + 1 s of backoff) = {longest_call:g} s"
            )
        return config


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required")
    return value


def _database_url(env: Mapping[str, str]) -> str:
    url = _required(env, "DATABASE_URL")
    try:
        check_conninfo(url, "DATABASE_URL")
    except ConninfoError as exc:
        raise ConfigError(str(exc)) from None
    return url


def _stripe_api_key(env: Mapping[str, str]) -> str:
    key = _required(env, "STRIPE_API_KEY")
    if not re.fullmatch(r"(sk|rk)_(test|live)_[A-Za-z0-9_]+", key):
        raise ConfigError(
            "STRIPE_API_KEY must be a Stripe secret or restricted key (sk_test_…, sk_live_…, rk_…)"
        )
    return key


def _stripe_api_base(env: Mapping[str, str]) -> str | None:
    base = env.get("STRIPE_API_BASE", "").strip()
    if not base:
        return None
    parts = urlsplit(base)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.username:
        raise ConfigError(
            f"STRIPE_API_BASE must be an http(s) URL without credentials, got {base!r}"
        )
    return base.rstrip("/")


def _currency(env: Mapping[str, str]) -> str:
    currency = env.get("PAYMENT_CURRENCY", "USD").strip().upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise ConfigError(f"PAYMENT_CURRENCY must be a 3-letter ISO code, got {currency!r}")
    return currency


def _float(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number of seconds, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum} seconds, got {value}")
    return value


def _float_value(
    env: Mapping[str, str], name: str, default: float, minimum: float, maximum: float
) -> float:
    """A number that is not a duration (a rate a second)."""
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name} must be a number, got {raw!r}") from None
    if not minimum <= value <= maximum:
        raise ConfigError(f"{name} must be between {minimum} and {maximum}, got {value}")
    return value


def _worker_id(env: Mapping[str, str]) -> str:
    worker_id = env.get("WORKER_ID", "").strip() or _default_worker_id(env)
    # The database keeps it as the leader's id and in attempted_by.
    if len(worker_id) > 127:
        raise ConfigError(f"WORKER_ID must be at most 127 characters, got {len(worker_id)}")
    return worker_id


def _default_worker_id(env: Mapping[str, str]) -> str:
    name = env.get("SUPERVISOR_PROCESS_NAME") or "worker"
    return f"{socket.gethostname()}:{name}:{os.getpid()}"
