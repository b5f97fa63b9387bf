"""`python -m worker`: one worker process (supervisord runs RIVER_WORKER_COUNT of them)."""

from __future__ import annotations

import logging
import sys

from worker import logs
from worker.config import Config, ConfigError
from worker.service import (
    StartupError,
    Worker,
    database_password,
    install_signal_handlers,
    open_pool,
)

# Exit status for a configuration the process cannot run with (sysexits EX_CONFIG).
EXIT_CONFIG = 78


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        logs.configure("INFO")
        logging.getLogger("worker").critical("invalid configuration: %s", exc)
        return EXIT_CONFIG
    logs.configure(config.log_level, secrets=[config.stripe_api_key, database_password(config)])
    log = logging.getLogger("worker")
    try:
        pool = open_pool(config)
    except StartupError as exc:
        log.critical("cannot start: %s", exc)
        return 1
    try:
        worker = Worker(config, pool)
        install_signal_handlers(worker)
        worker.run()
    except StartupError as exc:
        log.critical("cannot start: %s", exc)
        return EXIT_CONFIG
    finally:
        pool.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
