"""`python -m worker.scaler`: starts RIVER_WORKER_COUNT of supervisord's worker processes.

supervisord refuses a config whose `%(ENV_…)s` is unset, so `numprocs` cannot
default to 1 from the environment. supervisord.conf therefore declares
MAX_WORKERS processes that do not start on their own, and this one-shot
program starts the first RIVER_WORKER_COUNT (default 1) through supervisord's
own XML-RPC interface."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

from common import jsonlog as logs
from common.envconfig import ConfigError, env_int
from common.supervisor import rpc as supervisor_rpc

GROUP = "worker"
MAX_WORKERS = 32
EXIT_CONFIG = 78


def worker_names(rpc: Any) -> list[str]:
    """The worker processes supervisord knows, in process-number order."""
    names = [p["name"] for p in rpc.supervisor.getAllProcessInfo() if p["group"] == GROUP]
    return sorted(names)


def fresh_metrics_dir(directory: str) -> None:
    """Empties prometheus-client's multiprocess directory before any worker runs.

    Files left by an earlier supervisord would be summed into this one's
    totals; this program runs once per supervisord start, before the workers."""
    if not directory:
        return
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink()


def main() -> int:
    logs.configure("INFO")
    log = logging.getLogger("worker.scaler")
    try:
        count = env_int(os.environ, "RIVER_WORKER_COUNT", 1, minimum=1, maximum=MAX_WORKERS)
    except ConfigError as exc:
        log.critical("invalid configuration: %s", exc)
        return EXIT_CONFIG
    rpc = supervisor_rpc()
    names = worker_names(rpc)
    if len(names) < count:
        log.critical(
            "RIVER_WORKER_COUNT=%d but supervisord.conf declares only %d worker processes",
            count,
            len(names),
        )
        return EXIT_CONFIG
    fresh_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    for name in names[:count]:
        rpc.supervisor.startProcess(f"{GROUP}:{name}", False)
    log.info("workers started", extra={"count": count, "processes": names[:count]})
    return 0


if __name__ == "__main__":
    sys.exit(main())
