"""Fixtures of the tests of deploy/."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.deploy import deployfiles


@pytest.fixture(scope="session")
def promtool() -> Path:
    path = deployfiles.promtool_path()
    assert path.is_file(), f"no promtool at {path}"
    return path


@pytest.fixture(scope="session")
def prometheus() -> Path:
    path = deployfiles.prometheus_bindir() / "prometheus"
    assert path.is_file(), f"no prometheus at {path}"
    return path
