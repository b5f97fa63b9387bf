"""`python -m worker.scaler`: runs RIVER_WORKER_COUNT of supervisord's worker processes.

supervisord refuses a config whose `%(ENV_…)s` is unset, so `numprocs` cannot
default to 1 from the environment. supervisord.conf therefore declares one worker
that does not start on its own, and includes `.run/workers.conf` (through the
link `supervisord.workers.conf`). This one-shot program writes there
`numprocs=RIVER_WORKER_COUNT`, has supervisord re-read its configuration and
swap in the resized group, and starts every worker in it, all through
supervisord's own XML-RPC interface: `supervisorctl status` then lists exactly
the workers that run."""

from __future__ import annotations

import logging
import os
import sys
import xmlrpc.client
from pathlib import Path
from typing import Any

from supervisor.xmlrpc import Faults

from common import jsonlog as logs
from common.envconfig import ConfigError, env_int
from common.supervisor import EXIT_CONFIG
from common.supervisor import rpc as supervisor_rpc

GROUP = "worker"
MAX_WORKERS = 32


def worker_names(rpc: Any) -> list[str]:
    """The worker processes supervisord knows, in process-number order."""
    names = [p["name"] for p in rpc.supervisor.getAllProcessInfo() if p["group"] == GROUP]
    return sorted(names)


def include_text(count: int) -> str:
    """What .run/workers.conf holds: only the count; the rest is supervisord.conf's."""
    return (
        "; Written by worker-scaler at every supervisord start (RIVER_WORKER_COUNT):\n"
        "; edits are overwritten. The worker's settings are in supervisord.conf.\n"
        f"[program:{GROUP}]\nnumprocs={count}\n"
    )


def write_include(path: Path, count: int) -> None:
    """Replaces the include file whole: supervisord never reads half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    partial.write_text(include_text(count))
    partial.replace(path)


def resize(rpc: Any) -> None:
    """Has supervisord re-read its configuration and, if the workers' group changed,
    replace it (its processes are stopped first: none has started unless by hand)."""
    [[added, changed, _removed]] = rpc.supervisor.reloadConfig()
    if GROUP in changed:
        rpc.supervisor.stopProcessGroup(GROUP, True)
        rpc.supervisor.removeProcessGroup(GROUP)
    if GROUP in changed or GROUP in added:
        rpc.supervisor.addProcessGroup(GROUP)


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
    include = os.environ.get("WORKERS_CONF", "").strip()
    if not include:
        log.critical("WORKERS_CONF is not set: supervisord.conf's worker-scaler section sets it")
        return EXIT_CONFIG
    rpc = supervisor_rpc()
    write_include(Path(include), count)
    resize(rpc)
    names = worker_names(rpc)
    if len(names) != count:
        log.critical(
            "RIVER_WORKER_COUNT=%d but supervisord runs %d worker processes: "
            "does supervisord.conf still include %s?",
            count,
            len(names),
            include,
        )
        return EXIT_CONFIG
    fresh_metrics_dir(os.environ.get("PROMETHEUS_MULTIPROC_DIR", ""))
    for name in names:
        try:
            rpc.supervisor.startProcess(f"{GROUP}:{name}", False)
        except xmlrpc.client.Fault as fault:  # started by hand before a rerun of ours
            if fault.faultCode != Faults.ALREADY_STARTED:
                raise
    log.info("workers started", extra={"count": count, "processes": names})
    return 0


if __name__ == "__main__":
    sys.exit(main())
