"""`python -m worker`: one worker process (supervisord runs RIVER_WORKER_COUNT of them)."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from common import jsonlog as logs
from worker.config import Config, ConfigError
from worker.service import (
    StartupError,
    Worker,
    database_password,
    install_signal_handlers,
    open_pool,
)
from worker.supervisor_rpc import stop_self

# Exit status for a configuration the process cannot run with (sysexits EX_CONFIG).
EXIT_CONFIG = 78


def refuse(log: logging.Logger, message: str) -> int:
    """One clear line, then stay stopped: a restart would only say it again."""
    log.critical(message)
    # supervisord answers with SIGTERM; we are leaving anyway, with our own status.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_self()
    return EXIT_CONFIG


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        logs.configure("INFO")
        return refuse(logging.getLogger("worker"), f"invalid configuration: {exc}")
    logs.configure(config.log_level, secrets=[config.stripe_api_key, database_password(config)])
    log = logging.getLogger("worker")

    stop = threading.Event()

    def stop_waiting(_signum: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, stop_waiting)
    signal.signal(signal.SIGINT, stop_waiting)
    try:
        pool = open_pool(config, stop)
    except StartupError as exc:
        log.info("not started: %s", exc)
        return 0
    try:
        worker = Worker(config, pool, stop)
        install_signal_handlers(worker)
        worker.run()
    except StartupError as exc:
        return refuse(log, f"cannot start: {exc}")
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
