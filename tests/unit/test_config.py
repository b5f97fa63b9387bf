"""Worker settings: defaults, validation, and secrets kept out of messages."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from common.envconfig import ConfigError
from metrics.config import ExporterConfig
from worker.config import Config

BASE = {
    "DATABASE_URL": "postgresql://worker:pa55word@db.internal:5432/app",
    "STRIPE_API_KEY": "sk_test_51Habcdefghijklmnop",
}


def test_defaults() -> None:
    config = Config.from_env(BASE)
    assert config.payment_currency == "USD"
    assert (config.db_min_conns, config.db_max_conns) == (1, 4)
    assert config.stripe_api_base is None
    assert config.concurrency == 10
    assert config.stripe_read_timeout == 30.0
    assert config.stripe_connect_timeout == 5.0
    assert (config.reconcile_after, config.reconcile_rate) == (600.0, 5.0)
    assert config.backfill_interval == 300.0


def test_values_are_read() -> None:
    config = Config.from_env(
        {
            **BASE,
            "PAYMENT_CURRENCY": "eur",
            "DB_MIN_CONNS": "2",
            "DB_MAX_CONNS": "8",
            "STRIPE_API_BASE": "http://127.0.0.1:12111/",
            "WORKER_CONCURRENCY": "3",
            "RECONCILE_AFTER": "120",
            "RECONCILE_RATE": "0.5",
            "BACKFILL_INTERVAL": "60",
        }
    )
    assert (config.reconcile_after, config.reconcile_rate, config.backfill_interval) == (
        120.0,
        0.5,
        60.0,
    )
    assert config.payment_currency == "EUR"
    assert (config.db_min_conns, config.db_max_conns) == (2, 8)
    assert config.stripe_api_base == "http://127.0.0.1:12111"
    assert config.concurrency == 3


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL is required"),
        ({"STRIPE_API_KEY": ""}, "STRIPE_API_KEY is required"),
        ({"STRIPE_API_KEY": "pk_test_abc"}, "STRIPE_API_KEY must be a Stripe secret"),
        ({"DB_MAX_CONNS": "abc"}, "DB_MAX_CONNS must be a whole number, got 'abc'"),
        ({"DB_MAX_CONNS": "0"}, "DB_MAX_CONNS must be between 1 and"),
        ({"DB_MIN_CONNS": "5"}, "DB_MIN_CONNS (5) must not exceed DB_MAX_CONNS (4)"),
        ({"PAYMENT_CURRENCY": "dollars"}, "PAYMENT_CURRENCY must be a 3-letter ISO code"),
        ({"STRIPE_API_BASE": "ftp://x"}, "STRIPE_API_BASE must be an http(s) URL"),
        ({"STRIPE_READ_TIMEOUT": "soon"}, "STRIPE_READ_TIMEOUT must be a number of seconds"),
        ({"STRIPE_READ_TIMEOUT": "500"}, "STRIPE_READ_TIMEOUT must be between"),
        ({"LOG_LEVEL": "chatty"}, "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
        # Below payments.config.min_job_retention, which the database enforces too.
        ({"CLEANER_COMPLETED_RETENTION": "3599"}, "CLEANER_COMPLETED_RETENTION must be between"),
        ({"CLEANER_DISCARDED_RETENTION": "60"}, "CLEANER_DISCARDED_RETENTION must be between"),
        ({"RECONCILE_AFTER": "0"}, "RECONCILE_AFTER must be between 1 and"),
        # Stripe allows 100 reads a second in live mode: stay far below.
        ({"RECONCILE_RATE": "50"}, "RECONCILE_RATE must be between 0.1 and 20, got 50"),
        ({"RECONCILE_RATE": "fast"}, "RECONCILE_RATE must be a number, got 'fast'"),
        ({"BACKFILL_INTERVAL": "1"}, "BACKFILL_INTERVAL must be between"),
        ({"WORKER_ID": "w" * 128}, "WORKER_ID must be at most 127 characters, got 128"),
    ],
)
def test_bad_values_are_named(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, **changes})
    assert message in str(err.value)


def test_bad_database_url_does_not_echo_it() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, "DATABASE_URL": "host=x password=hunter2 ==="})
    assert "hunter2" not in str(err.value)
    assert "DATABASE_URL is not a valid PostgreSQL connection string" in str(err.value)


def test_bad_stripe_key_is_not_echoed() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, "STRIPE_API_KEY": "sk_prod_verysecret"})
    assert "verysecret" not in str(err.value)


def test_repr_hides_secrets() -> None:
    text = repr(Config.from_env(BASE))
    assert "pa55word" not in text
    assert "sk_test_51H" not in text
    assert "payment_currency='USD'" in text


# Passwords a user might paste into DATABASE_URL as they are, not URL-encoded.
UNENCODED = {
    "at": "Zq7@Kp3wXm",
    "two_ats": "Zq7@Kp@3wXm",
    "slash": "Zq7/Kp3wXm",
    "question_mark": "Zq7?Kp3wXm",
    "hash": "Zq7#Kp3wXm",
    "brackets": "Zq7[Kp]3wXm",
    "space": "Zq7 Kp3wXm",
    "slash_digits": "8812/4471",
    "hash_digits": "8812#4471",
    "question_mark_digits": "8812?4471",
}


def _substrings(secret: str, shortest: int = 3) -> set[str]:
    return {secret[i:j] for i in range(len(secret)) for j in range(i + shortest, len(secret) + 1)}


@pytest.mark.parametrize("password", UNENCODED.values(), ids=UNENCODED.keys())
@pytest.mark.parametrize(
    "load", [Config.from_env, ExporterConfig.from_env], ids=["worker", "exporter"]
)
def test_an_unencoded_password_in_a_url_is_refused_without_quoting_it(
    password: str, load: Callable[[dict[str, str]], object]
) -> None:
    url = f"postgresql://payments_app:{password}@db.internal:5432/app"
    with pytest.raises(ValueError) as err:
        load({**BASE, "DATABASE_URL": url})
    message = str(err.value)
    assert message.startswith("DATABASE_URL ")
    assert "URL-encode the password (e.g. @ as %40)" in message
    assert "payments_app" not in message
    leaked = [part for part in _substrings(password) if part in message]
    assert leaked == []


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://payments_app:Zq7%40Kp%2F3w%3FX%23m%5B%5D%20@db.internal:5432/app",
        "postgres://payments_app:pa55word@db.internal/app?sslmode=require&application_name=a@b",
        "postgresql://payments_app@[::1]:5432,db2.internal:5433/app",
        "postgresql:///app?host=/var/run/postgresql",
        "postgresql://u:pa:ss@db.internal/app",
        "host=db.internal dbname=app user=payments_app password=Zq7@Kp/3w?X#m",
        "host=db.internal dbname=app password='Zq7 @Kp'",
    ],
    ids=["encoded", "at_in_query", "ipv6_multihost", "socket", "colon", "keyword", "quoted"],
)
def test_valid_connection_strings_pass(url: str) -> None:
    assert Config.from_env({**BASE, "DATABASE_URL": url}).database_url == url
    assert ExporterConfig.from_env({"DATABASE_URL": url}).database_url == url


def test_a_malformed_url_with_an_at_gets_the_encoding_hint() -> None:
    with pytest.raises(ConfigError) as err:
        Config.from_env({**BASE, "DATABASE_URL": "postgresql://u:Zq7%zzKp3wXm@db.internal/app"})
    message = str(err.value)
    assert "DATABASE_URL is not a valid PostgreSQL connection string" in message
    assert "URL-encode the password" in message
    assert [part for part in _substrings("Zq7%zzKp3wXm") if part in message] == []
