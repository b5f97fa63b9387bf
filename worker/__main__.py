"""`python -m worker`: one worker process (supervisord runs RIVER_WORKER_COUNT of them)."""

from __future__ import annotations

import logging
import sys

from common import jsonlog as logs
from common.envconfig import ConfigError
from common.supervisor import refuse
from worker.config import Config
from worker.service import (
    STOP_CLOSE_SECONDS,
    StartupError,
    StopRequest,
    Worker,
    database_password,
    flush_and_exit,
    open_pool,
)
from worker.store import SchemaNotDeployed


def main() -> int:
    try:
        config = Config.from_env()
    except ConfigError as exc:
        logs.configure("INFO")
        return refuse(logging.getLogger("worker"), f"invalid configuration: {exc}")
    logs.configure(config.log_level, secrets=[config.stripe_api_key, database_password(config)])
    log = logging.getLogger("worker")

    # From here on, SIGTERM/SIGINT only set a flag and wake the main thread.
    stop = StopRequest()
    stop.install()
    try:
        pool = open_pool(config, stop)
    except StartupError as exc:
        log.info("not started: %s", exc)
        return 0
    try:
        worker = Worker(config, pool, stop)
    except SchemaNotDeployed as exc:
        pool.close(timeout=STOP_CLOSE_SECONDS)
        return refuse(log, str(exc))
    except StartupError as exc:
        pool.close(timeout=STOP_CLOSE_SECONDS)
        return refuse(log, f"cannot start: {exc}")
    status = worker.run(watchdog=True)
    pool.close(timeout=STOP_CLOSE_SECONDS)
    if status != 0:
        # Threads may still be in a job or a statement: the interpreter's own
        # exit would wait for them.
        flush_and_exit(status)
    return status


if __name__ == "__main__":
    sys.exit(main())
