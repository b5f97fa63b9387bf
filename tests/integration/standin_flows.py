"""Fixtures and helpers of the tests that drive the stand-in through the official SDK: a
stand-in of their own per module that signs webhooks to a receiver in the test
(`hooked_standin`, never the session's `standin` of tests/conftest.py), the SDK pointed at
a stand-in, waiting, and the stand-in's CLI run as a process. tests/integration/conftest.py
makes the fixtures available to every integration test."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import stripe

from stripe_standin import StandinAdmin, StandinProcess
from tests.unit.standin_receiver import Receiver

ROOT = Path(__file__).resolve().parents[2]
API_KEY = "sk_test_standin_flows_4242"
SECRET = "whsec_integration_standin_flows"


@contextmanager
def sdk_client(url: str, api_key: str = API_KEY) -> Iterator[stripe.StripeClient]:
    """The official SDK against the stand-in at `url`, without the SDK's own retries."""
    http_client = stripe.RequestsClient()
    try:
        yield stripe.StripeClient(
            api_key, base_addresses={"api": url}, max_network_retries=0, http_client=http_client
        )
    finally:
        http_client.close()  # type: ignore[no-untyped-call]


@pytest.fixture(scope="module")
def hooked_standin_process() -> Iterator[StandinProcess]:
    """A stand-in process for one module, signing its webhooks with SECRET."""
    with StandinProcess(
        quiet=True, webhook_secret=SECRET, webhook_retry_base=0.05, webhook_timeout=2.0
    ) as process:
        yield process


@pytest.fixture
def hooked_standin(hooked_standin_process: StandinProcess) -> StandinProcess:
    """The module's stand-in, emptied of what earlier tests left."""
    hooked_standin_process.admin.reset()
    return hooked_standin_process


@pytest.fixture
def hooked_admin(hooked_standin: StandinProcess) -> StandinAdmin:
    return hooked_standin.admin


@pytest.fixture
def hooks(hooked_admin: StandinAdmin) -> Iterator[Receiver]:
    """A receiver in the test that the module's stand-in delivers its webhooks to."""
    with Receiver(SECRET) as receiver:
        hooked_admin.configure_webhooks(url=receiver.url)
        yield receiver


@pytest.fixture
def hooked_client(hooked_standin: StandinProcess) -> Iterator[stripe.StripeClient]:
    with sdk_client(hooked_standin.url) as client:
        yield client


def wait_until(condition: Callable[[], Any], what: str, timeout: float = 10.0) -> Any:
    """Polls `condition` every 10 ms until it is truthy; returns its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def cli(standin: StandinProcess, *args: str, api_key: str | None = API_KEY) -> tuple[int, str, str]:
    """`python -m stripe_standin <args> --api-base <the stand-in>`: status, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if k not in ("STRIPE_API_KEY", "STRIPE_API_BASE")}
    env["PYTHONPATH"] = str(ROOT)
    if api_key is not None:
        env["STRIPE_API_KEY"] = api_key
    done = subprocess.run(
        [sys.executable, "-m", "stripe_standin", *args, "--api-base", standin.url],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stdout, done.stderr
