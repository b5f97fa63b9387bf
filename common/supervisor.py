"""Talking back to the supervisord that runs us, through its XML-RPC interface."""

from __future__ import annotations

import configparser
import logging
import os
import signal
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from supervisor import childutils

log = logging.getLogger("supervisor_rpc")

# Exit status for a configuration the process cannot run with (sysexits EX_CONFIG).
EXIT_CONFIG = 78


def rpc(env: Mapping[str, str] | None = None) -> Any:
    """supervisord's XML-RPC proxy, from the variables it gives its children."""
    return childutils.getRPCInterface(dict(os.environ if env is None else env))


def ctl_credentials(conf: Path) -> tuple[str | None, str | None]:
    """The username and password of supervisord.conf's [supervisorctl]: what a client
    outside supervisord (a test, the benchmark) gives the socket."""
    parser = configparser.RawConfigParser(inline_comment_prefixes=(";",))
    parser.read(conf)
    get = parser.get
    return get("supervisorctl", "username", fallback=None), get(
        "supervisorctl", "password", fallback=None
    )


def stop_self(env: Mapping[str, str] | None = None) -> bool:
    """Asks supervisord to leave this process stopped instead of restarting it.

    For a program (a worker, the receiver) that cannot run as configured: restarting
    it would only print the same error again, forever. False when not under
    supervisord."""
    env = os.environ if env is None else env
    group, name = env.get("SUPERVISOR_GROUP_NAME"), env.get("SUPERVISOR_PROCESS_NAME")
    if not (group and name and env.get("SUPERVISOR_SERVER_URL")):
        return False
    try:
        rpc(env).supervisor.stopProcess(f"{group}:{name}", False)
    except Exception as exc:  # supervisord gone or refusing: exiting is all that is left
        log.warning("could not ask supervisord to keep this process stopped: %s", exc)
        return False
    return True


def refuse(program_log: logging.Logger, message: str) -> int:
    """One clear line, then stay stopped: a restart would only say it again. Returns
    EXIT_CONFIG, for main() to exit with."""
    program_log.critical(message)
    # supervisord answers with SIGTERM; we are leaving anyway, with our own status.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    stop_self()
    return EXIT_CONFIG
