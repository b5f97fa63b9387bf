"""Webhook start-up options: flags and STANDIN_* variables, the secret from the environment
or a file and never from a flag, and never shown."""

from pathlib import Path

import pytest

from stripe_standin.config import SECRET_ENV, StandinConfig, build_parser, load_config
from stripe_standin.faults import ConfigError
from stripe_standin.webhooks import WebhookSettings

URL = "http://127.0.0.1:12199/hooks"


def test_defaults_deliver_nothing() -> None:
    config = load_config([], environ={})
    assert config.webhooks == WebhookSettings()
    assert config.webhook_secret is None


def test_flags_and_the_secret_from_the_environment() -> None:
    config = load_config(
        [
            "--webhook-url",
            URL,
            "--webhook-retry-base",
            "0.5",
            "--webhook-max-attempts",
            "6",
            "--webhook-max-age",
            "60",
            "--webhook-timeout",
            "3",
            "--webhook-duplicate",
            "0.1",
            "--webhook-drop",
            "0.2",
            "--webhook-bad-signature",
            "0.3",
            "--webhook-reorder-max",
            "2",
            "--webhook-enabled",
            "false",
        ],
        environ={SECRET_ENV: "whsec_env"},
    )
    assert config.webhooks == WebhookSettings(
        url=URL,
        enabled=False,
        retry_base_seconds=0.5,
        max_attempts=6,
        max_age_seconds=60.0,
        timeout_seconds=3.0,
        duplicate=0.1,
        drop=0.2,
        bad_signature=0.3,
        reorder_max_seconds=2.0,
    )
    assert config.webhook_secret == "whsec_env"
    assert "whsec_env" not in repr(config)


def test_variables_set_the_options_too() -> None:
    config = load_config(
        [],
        environ={"STANDIN_WEBHOOK_URL": URL, SECRET_ENV: "whsec_env", "STANDIN_WEBHOOK_DROP": "1"},
    )
    assert (config.webhooks.url, config.webhooks.drop) == (URL, 1.0)


def test_the_secret_file_wins_over_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    path.write_text("whsec_file\n")
    config = load_config(
        ["--webhook-url", URL, "--webhook-secret-file", str(path)],
        environ={SECRET_ENV: "whsec_env"},
    )
    assert config.webhook_secret == "whsec_file"


def test_a_missing_or_empty_secret_file_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        load_config(["--webhook-secret-file", str(tmp_path / "absent")], environ={})
    assert "cannot read the webhook secret file" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(SystemExit):
        load_config(["--webhook-secret-file", str(empty)], environ={})
    assert "is empty" in capsys.readouterr().err


def test_a_url_needs_a_secret(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        load_config(["--webhook-url", URL], environ={})
    assert "needs a signing secret" in capsys.readouterr().err
    with pytest.raises(ConfigError):
        StandinConfig(webhooks=WebhookSettings(url=URL))


def test_there_is_no_secret_flag() -> None:
    flags = {a for action in build_parser()._actions for a in action.option_strings}
    assert "--webhook-secret" not in flags
    assert "--webhook-secret-file" in flags


@pytest.mark.parametrize(
    "argv",
    [
        ["--webhook-url", "ftp://x/y"],
        ["--webhook-retry-base", "0"],
        ["--webhook-max-attempts", "0"],
        ["--webhook-drop", "2"],
        ["--webhook-reorder-max", "-1"],
    ],
)
def test_invalid_webhook_flags_exit_with_usage(argv: list[str]) -> None:
    with pytest.raises(SystemExit):
        load_config(argv, environ={SECRET_ENV: "whsec_env"})
