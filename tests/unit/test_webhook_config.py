"""The receiver's settings and its signature check, against the real SDK, in-process."""

from __future__ import annotations

import time

import pytest

from common.envconfig import ConfigError
from tests.webhook_support import OLD_SECRET, SECRET, body_of, event, intent, signature
from webhooks.config import MissingSecretError, WebhookConfig
from webhooks.verify import Rejected, parse, verify

BASE = {
    "DATABASE_URL": "postgresql://hook:pw-Zq81@127.0.0.1/db",
    "STRIPE_API_KEY": "sk_test_abc",
    "STRIPE_WEBHOOK_SECRET": SECRET,
}


def test_defaults_and_the_api_keys_mode() -> None:
    config = WebhookConfig.from_env(BASE)
    assert (config.host, config.port, config.pool_size, config.log_level) == (
        "0.0.0.0",  # noqa: S104  # the default it must have
        8080,
        4,
        "INFO",
    )
    assert config.livemode is False
    assert config.webhook_secrets == (SECRET,)
    for key in ("sk_live_abc", "rk_live_abc"):
        assert WebhookConfig.from_env({**BASE, "STRIPE_API_KEY": key}).livemode is True
    assert WebhookConfig.from_env({**BASE, "STRIPE_API_KEY": "rk_test_abc"}).livemode is False


def test_rotation_secrets_are_comma_separated_and_all_redacted() -> None:
    config = WebhookConfig.from_env({**BASE, "STRIPE_WEBHOOK_SECRET": f" {SECRET} ,{OLD_SECRET},"})
    assert config.webhook_secrets == (SECRET, OLD_SECRET)
    assert set(config.secrets()) >= {SECRET, OLD_SECRET, "sk_test_abc", "pw-Zq81"}
    assert SECRET not in repr(config) and "pw-Zq81" not in repr(config)


def test_its_own_login_overrides_database_url() -> None:
    env = {**BASE, "WEBHOOK_DATABASE_URL": "postgresql://webhook@127.0.0.1/db"}
    assert WebhookConfig.from_env(env).database_url == "postgresql://webhook@127.0.0.1/db"


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"DATABASE_URL": ""}, "DATABASE_URL is required"),
        ({"STRIPE_API_KEY": "pk_test_abc"}, "STRIPE_API_KEY must be a Stripe secret"),
        ({"STRIPE_WEBHOOK_SECRET": "whsec_ok,plain-Pw9"}, "secret number 2 of 2 is not"),
        ({"WEBHOOK_PORT": "0"}, "WEBHOOK_PORT must be between 1 and 65535, got 0"),
        ({"WEBHOOK_POOL_SIZE": "many"}, "WEBHOOK_POOL_SIZE must be a whole number"),
        ({"LOG_LEVEL": "loud"}, "LOG_LEVEL must be DEBUG, INFO, WARNING or ERROR"),
        ({"WEBHOOK_DATABASE_URL": "postgresql://a:b@c@/x"}, "WEBHOOK_DATABASE_URL has a"),
    ],
)
def test_bad_settings_are_named_without_their_values(changes: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as raised:
        WebhookConfig.from_env({**BASE, **changes})
    assert "plain-Pw9" not in str(raised.value)


@pytest.mark.parametrize("value", ["", " ", ",", " , "])
def test_no_secret_is_its_own_error(value: str) -> None:
    with pytest.raises(MissingSecretError, match="STRIPE_WEBHOOK_SECRET is not set"):
        WebhookConfig.from_env({**BASE, "STRIPE_WEBHOOK_SECRET": value})


def test_the_sdk_accepts_our_test_signatures_and_tells_stale_from_wrong() -> None:
    body = body_of(event(intent("x")))
    assert verify(body, signature(body, OLD_SECRET), (SECRET, OLD_SECRET)) == body.decode()
    with pytest.raises(Rejected) as wrong:
        verify(body, signature(body, "whsec_other"), (SECRET,))
    assert wrong.value.reason == "signature"
    with pytest.raises(Rejected) as stale:
        verify(body, signature(body, SECRET, int(time.time()) - 400), (OLD_SECRET, SECRET))
    assert stale.value.reason == "stale"
    # Within the tolerance is fine; an old signature by a wrong secret is a wrong one.
    assert verify(body, signature(body, SECRET, int(time.time()) - 250), (SECRET,))
    with pytest.raises(Rejected) as old_and_wrong:
        verify(body, signature(body, "whsec_other", int(time.time()) - 400), (SECRET,))
    assert old_and_wrong.value.reason == "signature"
    with pytest.raises(Rejected) as not_utf8:
        verify(b"\xff" + body, signature(body, SECRET), (SECRET,))
    assert not_utf8.value.reason == "signature"


def test_parse_wants_an_event_of_our_mode() -> None:
    text = body_of(event(intent("x"), type="charge.refunded", livemode=True)).decode()
    parsed = parse(text, livemode=True)
    assert (parsed.type, parsed.livemode, parsed.text) == ("charge.refunded", True, text)
    with pytest.raises(Rejected) as other_mode:
        parse(text, livemode=False)
    assert other_mode.value.reason == "livemode"
    for bad in ("", "[]", '{"object":"event"}', '{"object":"event","id":"evt_1","type":"x"}'):
        with pytest.raises(Rejected) as malformed:
            parse(bad, livemode=True)
        assert malformed.value.reason == "malformed"
