"""Receiver settings from the environment, validated once at start."""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

import psycopg.conninfo

from common.dburl import ConninfoError, check_conninfo
from common.envconfig import ConfigError, env_int, env_log_level

SECRET_VARIABLE = "STRIPE_WEBHOOK_SECRET"  # noqa: S105  # its name, not its value
# Stripe's endpoint signing secrets: whsec_ and then letters and digits.
_SECRET = re.compile(r"whsec_[A-Za-z0-9_]+")
_API_KEY = re.compile(r"(sk|rk)_(test|live)_[A-Za-z0-9_]+")


class MissingSecretError(ConfigError):
    """No signing secret: the receiver cannot verify anything, so it does not run."""


@dataclass(frozen=True)
class WebhookConfig:
    database_url: str = field(repr=False)
    # Only the key's mode matters here: events of the other mode are refused.
    livemode: bool
    stripe_api_key: str = field(repr=False)
    # Every secret an event may be signed with: more than one during a rotation.
    webhook_secrets: tuple[str, ...] = field(repr=False)
    host: str
    port: int
    pool_size: int
    log_level: str

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> WebhookConfig:
        env = os.environ if env is None else env
        # Its own login (a member of payment_webhook) where the programs share one
        # environment, as under supervisord; else DATABASE_URL's.
        name = (
            "WEBHOOK_DATABASE_URL"
            if env.get("WEBHOOK_DATABASE_URL", "").strip()
            else "DATABASE_URL"
        )
        url = _required(env, name)
        try:
            check_conninfo(url, name)
        except ConninfoError as exc:
            raise ConfigError(str(exc)) from None
        key = _required(env, "STRIPE_API_KEY")
        if not _API_KEY.fullmatch(key):
            raise ConfigError(
                "STRIPE_API_KEY must be a Stripe secret or restricted key "
                "(sk_test_…, sk_live_…, rk_…)"
            )
        return cls(
            database_url=url,
            livemode=key.startswith(("sk_live_", "rk_live_")),
            stripe_api_key=key,
            webhook_secrets=_secrets(env),
            host=env.get("WEBHOOK_HOST", "").strip() or "0.0.0.0",  # noqa: S104  # Stripe calls in
            port=env_int(env, "WEBHOOK_PORT", 8080, 1, 65535),
            pool_size=env_int(env, "WEBHOOK_POOL_SIZE", 4, 1, 100),
            log_level=env_log_level(env),
        )

    @property
    def database_password(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.database_url).get("password") or "")

    def secrets(self) -> list[str]:
        """Every value the logs must never show."""
        return [self.stripe_api_key, *self.webhook_secrets, self.database_password]


def _required(env: Mapping[str, str], name: str) -> str:
    value = env.get(name, "").strip()
    if not value:
        raise ConfigError(f"{name} is required")
    return value


def _secrets(env: Mapping[str, str]) -> tuple[str, ...]:
    raw = env.get(SECRET_VARIABLE, "")
    secrets = tuple(part.strip() for part in raw.split(",") if part.strip())
    if not secrets:
        raise MissingSecretError(
            f"{SECRET_VARIABLE} is not set: without the endpoint's signing secret no event "
            "can be verified, so the webhook receiver stays stopped (set it to the whsec_… "
            "secret(s), comma-separated during a rotation, then start it)"
        )
    for number, secret in enumerate(secrets, 1):
        if not _SECRET.fullmatch(secret):
            raise ConfigError(
                f"{SECRET_VARIABLE}: secret number {number} of {len(secrets)} is not a Stripe "
                "signing secret (whsec_ then letters and digits)"
            )
    return secrets
