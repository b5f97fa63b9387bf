"""`python -m metrics.reaper`: a supervisord event listener that tidies up after dead workers.

prometheus-client's multiprocess mode keeps one file per process. A dead
worker's counters and histograms must stay (their totals would otherwise go
backwards), but its live gauges (workers_up, heartbeat) must go, or a dead
process would look alive. supervisord tells us of every exit and stop, with
the pid: that pid's live-gauge files are removed."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import TextIO

from prometheus_client import multiprocess
from supervisor import childutils

from common import jsonlog
from common.supervisor import refuse

log = logging.getLogger("metrics.reaper")

EVENTS = ("PROCESS_STATE_EXITED", "PROCESS_STATE_STOPPED")


def handle(eventname: str, payload: str, multiproc_dir: Path, group: str = "worker") -> int | None:
    """Marks the process of an exit/stop event dead; returns its pid, or None if not ours."""
    if eventname not in EVENTS:
        return None
    headers, _ = childutils.eventdata(payload + "\n")
    if headers.get("groupname") != group or not headers.get("pid", "").isdigit():
        return None
    pid = int(headers["pid"])
    multiprocess.mark_process_dead(pid, str(multiproc_dir))  # type: ignore[no-untyped-call]
    return pid


def main(stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> int:
    # stdout is supervisord's protocol channel: logs go to stderr.
    jsonlog.configure("INFO", stream=sys.stderr)
    directory = os.environ.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
    if not directory:
        return refuse(log, "PROMETHEUS_MULTIPROC_DIR is not set: nothing to tidy")
    while True:
        headers, payload = childutils.listener.wait(stdin, stdout)
        try:
            pid = handle(headers["eventname"], payload, Path(directory))
            if pid is not None:
                log.info("dead worker's live gauges removed", extra={"worker_pid": pid})
        except Exception:  # never leave supervisord waiting for an answer
            log.exception("could not handle event", extra={"event": headers.get("eventname")})
        childutils.listener.ok(stdout)


if __name__ == "__main__":
    sys.exit(main())
