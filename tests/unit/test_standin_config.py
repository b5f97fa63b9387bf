"""Command-line flags and STANDIN_* variables of the Stripe stand-in."""

from pathlib import Path

import pytest

from stripe_standin.config import DEFAULT_PORT, env_name, load_config
from stripe_standin.faults import FaultSettings


def test_defaults() -> None:
    config = load_config([], {})
    assert (config.host, config.port, config.port_file, config.api_key) == (
        "127.0.0.1",
        DEFAULT_PORT,
        None,
        None,
    )
    assert config.faults == FaultSettings()
    assert config.quiet is False
    assert 0 <= config.seed < 2**31


def test_every_flag(tmp_path: Path) -> None:
    config = load_config(
        [
            "--host=localhost",
            "--port=0",
            f"--port-file={tmp_path / 'port'}",
            "--api-key=sk_test_x",
            "--latency-ms=25",
            "--fail-5xx=0.1",
            "--fail-429=0.2",
            "--drop=0.3",
            "--lose-response=0.4",
            "--seed=9",
            "--quiet",
        ],
        {},
    )
    assert (config.host, config.port, config.port_file, config.api_key, config.seed) == (
        "localhost",
        0,
        tmp_path / "port",
        "sk_test_x",
        9,
    )
    assert config.faults == FaultSettings(
        latency_ms=25, fail_5xx=0.1, fail_429=0.2, drop=0.3, lose_response=0.4
    )
    assert config.quiet is True


def test_environment_variables_and_flags_win_over_them() -> None:
    environ = {
        "STANDIN_PORT": "4242",
        "STANDIN_LATENCY_MS": "30",
        "STANDIN_FAIL_5XX": "0.5",
        "STANDIN_LOSE_RESPONSE": "0.25",
        "STANDIN_API_KEY": "sk_test_env",
        "STANDIN_SEED": "5",
        "STANDIN_QUIET": "true",
        "STANDIN_PORT_FILE": "",  # empty means unset
    }
    config = load_config(["--latency-ms", "10"], environ)
    assert (config.port, config.api_key, config.seed, config.quiet) == (
        4242,
        "sk_test_env",
        5,
        True,
    )
    assert config.faults == FaultSettings(latency_ms=10, fail_5xx=0.5, lose_response=0.25)
    assert config.port_file is None
    assert env_name("fail_429") == "STANDIN_FAIL_429"


@pytest.mark.parametrize(
    ("argv", "environ"),
    [
        (["--drop", "1.5"], {}),
        (["--port", "70000"], {}),
        (["--latency-ms", "-5"], {}),
        ([], {"STANDIN_FAIL_429": "lots"}),
        (["--drop", "0.6", "--fail-5xx", "0.6"], {}),
        ([], {"STANDIN_QUIET": "maybe"}),
    ],
)
def test_invalid_values_exit_with_usage(
    argv: list[str], environ: dict[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        load_config(argv, environ)
    assert info.value.code == 2
    assert "usage:" in capsys.readouterr().err
