"""The loop that cancels expired card authorisations, as Stripe does on its own.

River's loop shape: the settings are checked in ``__init__``; :meth:`ExpirySweeper.run`
only waits, stops when asked and calls :meth:`ExpirySweeper.run_once`, which tests call
directly (with the app's fake clock). The app also expires lazily before every API request,
so the sweeper only matters for the webhooks of intents nobody asks about.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

DEFAULT_INTERVAL_SECONDS = 1.0


class ExpirySweeper:
    """Calls ``expire()`` (answers how many authorisations it canceled) every ``interval``."""

    def __init__(
        self, expire: Callable[[], int], interval: float = DEFAULT_INTERVAL_SECONDS
    ) -> None:
        if isinstance(interval, bool) or not isinstance(interval, int | float) or interval <= 0:
            raise ValueError(f"the sweep interval must be a positive number, got {interval!r}")
        self._expire = expire
        self._interval = float(interval)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def run_once(self) -> int:
        """One sweep: how many authorisations were canceled."""
        return self._expire()

    def run(self) -> None:
        """Sweep every interval until :meth:`stop`."""
        while not self._stop.wait(self._interval):
            self.run_once()

    def start(self) -> None:
        """Run in a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="expiry-sweeper", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Ask the loop to end and wait for it."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
