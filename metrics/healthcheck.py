"""`python -m metrics.healthcheck`: the image's HEALTHCHECK, the exporter's /healthz.

Exit 0 when /healthz answers 200: the exporter runs, the database answers, a worker beat
within METRICS_HEARTBEAT_MAX_AGE and none of its loops stalled. Otherwise exit 1 with
one line saying why (Docker keeps it in `docker inspect`'s health log)."""

from __future__ import annotations

import http.client
import os
import sys
from collections.abc import Mapping

TIMEOUT_SECONDS = 3.0
# What METRICS_HOST may be when the exporter listens on every address: then ask loopback.
_EVERY_ADDRESS = ("", "0.0.0.0", "::")  # noqa: S104 - compared against, never bound


def target(env: Mapping[str, str]) -> tuple[str, int]:
    """The exporter's address and port in this environment."""
    host = env.get("METRICS_HOST", "").strip().strip("[]")
    raw_port = env.get("METRICS_PORT", "").strip() or "9187"
    port = int(raw_port) if raw_port.isdigit() else 9187
    return ("127.0.0.1" if host in _EVERY_ADDRESS else host), port


def check(host: str, port: int, timeout: float = TIMEOUT_SECONDS) -> tuple[bool, str]:
    """(healthy, what /healthz said or why it could not be asked)."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        conn.request("GET", "/healthz")
        response = conn.getresponse()
        body = response.read().decode(errors="replace").strip()
    except (OSError, http.client.HTTPException) as exc:
        return False, f"the exporter does not answer on {host}:{port}: {exc}"
    finally:
        conn.close()
    return response.status == 200, body if response.status == 200 else f"{response.status} {body}"


def main() -> int:
    healthy, detail = check(*target(os.environ))
    print(("healthy: " if healthy else "unhealthy: ") + detail)
    return 0 if healthy else 1


if __name__ == "__main__":
    sys.exit(main())
