"""Polling for a condition the code under test brings about in its own time."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(condition: Callable[[], object], timeout: float = 5.0, what: str = "") -> float:
    """Polls `condition` every 10 ms until it is truthy; the seconds it took."""
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > timeout:
            raise AssertionError(f"not within {timeout} s: {what or condition}")
        time.sleep(0.01)
    return time.monotonic() - started
