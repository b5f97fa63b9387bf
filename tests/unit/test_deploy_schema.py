"""deploy/deploy_schema.py (the image's deploy-schema): DATABASE_URL to sqitch's target,
the password kept off the command line, one line for what it cannot use."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "deploy" / "deploy_schema.py"


def _load() -> ModuleType:
    spec = importlib.util.spec_from_file_location("deploy_schema", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["deploy_schema"] = module
    spec.loader.exec_module(module)
    return module


ds = _load()


@pytest.mark.parametrize(
    ("conninfo", "target", "password"),
    [
        (
            "postgresql://admin:p%40ss@db.example:5433/payment_worker",
            "db:pg://admin@db.example:5433/payment_worker",
            "p@ss",
        ),
        ("postgres://db/pw?sslmode=require", "db:pg://db/pw?sslmode=require", ""),
        ("host=db user=admin password=x dbname=pw", "db:pg://admin@db/pw", "x"),
        ("postgresql://u@[fd00::1]/pw", "db:pg://u@[fd00::1]/pw", ""),
        (
            "dbname=pw host=/var/run/postgresql",
            "db:pg:///pw?host=%2Fvar%2Frun%2Fpostgresql",
            "",
        ),
    ],
)
def test_the_target_has_everything_but_the_password(
    conninfo: str, target: str, password: str
) -> None:
    assert ds.sqitch_target(ds.parse(conninfo)) == (target, password)


@pytest.mark.parametrize(
    ("env", "line"),
    [
        ({}, "deploy-schema: DATABASE_URL is required"),
        ({"DATABASE_URL": "postgresql://u:pw@db"}, "deploy-schema: DATABASE_URL names no database"),
        (
            {"DATABASE_URL": "postgresql://u@a,b/pw"},
            "deploy-schema: DATABASE_URL names several hosts",
        ),
        (
            {"DATABASE_URL": "host=db dbname"},
            "deploy-schema: DATABASE_URL is not a libpq URL or key=value string",
        ),
    ],
)
def test_what_it_cannot_use_is_one_line_and_78(
    env: dict[str, str],
    line: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert ds.main([]) == 78
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith(line)
    assert err.count("\n") == 1
    assert "pw@" not in err


def test_localhost_in_a_container_gets_a_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ds.Path, "exists", lambda self: str(self) == "/.dockerenv")
    assert "inside a container" in ds.loopback_hint({"host": "localhost"})
    assert "inside a container" in ds.loopback_hint({})
    assert ds.loopback_hint({"host": "db.example"}) is None
