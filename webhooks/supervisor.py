"""Asking the supervisord that runs us to leave this process stopped.

The same request as worker/supervisor_rpc.py's stop_self, kept here so that the receiver
imports nothing of the worker."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from supervisor import childutils

log = logging.getLogger("webhooks.supervisor")


def stop_self(env: Mapping[str, str] | None = None) -> bool:
    """False when not under supervisord, or when it would not listen."""
    env = os.environ if env is None else env
    group, name = env.get("SUPERVISOR_GROUP_NAME"), env.get("SUPERVISOR_PROCESS_NAME")
    if not (group and name and env.get("SUPERVISOR_SERVER_URL")):
        return False
    try:
        childutils.getRPCInterface(dict(env)).supervisor.stopProcess(f"{group}:{name}", False)
    except Exception as exc:  # supervisord gone or refusing: exiting is all that is left
        log.warning("could not ask supervisord to keep this process stopped: %s", exc)
        return False
    return True
