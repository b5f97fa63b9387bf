"""The worker's signal path: SIGTERM only records a flag and wakes the main thread."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

from worker.service import StopRequest

ROOT = Path(__file__).resolve().parents[2]

# A real SIGTERM lands while the main thread holds an Event's lock, as when it is inside
# Event.wait()/set(). A handler that called Event.set() there would wait for that lock
# forever; the process would hang and the subprocess time out.
SIGNAL_UNDER_LOCK = """
import os, signal, threading
from worker.service import StopRequest
stop = StopRequest()
stop.install()
event = threading.Event()
with event._cond:
    os.kill(os.getpid(), signal.SIGTERM)
    for _ in range(100_000):  # the Python handler runs between these bytecodes
        pass
    handled = stop.signum
print(handled, stop.wait(5))
"""


def test_sigterm_while_the_main_thread_holds_a_lock_is_seen_without_deadlock() -> None:
    out = subprocess.run(
        [sys.executable, "-c", SIGNAL_UNDER_LOCK],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=20,
        check=True,
    )
    assert out.stdout.split() == ["15", "True"]


def test_a_request_from_another_thread_wakes_the_waiting_thread() -> None:
    stop = StopRequest()
    assert stop.wait(0) is False
    threading.Timer(0.05, stop.request).start()
    assert stop.wait(5) is True
    assert stop.is_set()  # and stays requested
    assert stop.wait(0) is True


def test_many_requests_never_block_the_requester() -> None:
    stop = StopRequest()
    for _ in range(100_000):  # far beyond a pipe's buffer
        stop.request()
    assert stop.wait(0) is True
