"""`python -m metrics`: the exporter supervisord runs beside the workers."""

from __future__ import annotations

import logging
import signal
import sys
import threading
from types import FrameType

from common import jsonlog
from common.supervisor import refuse
from metrics.collectors import build_registry
from metrics.config import ConfigError, ExporterConfig
from metrics.database import DatabaseReader
from metrics.server import ExporterApp, serve


def main() -> int:
    try:
        config = ExporterConfig.from_env()
    except ConfigError as exc:
        jsonlog.configure("INFO")
        return refuse(logging.getLogger("metrics"), f"invalid configuration: {exc}")
    jsonlog.configure("INFO", secrets=[config.database_password])
    log = logging.getLogger("metrics")
    if config.multiproc_dir is None:
        log.warning("PROMETHEUS_MULTIPROC_DIR is not set: only database metrics are served")
    else:
        # We may start before worker-scaler has made it; it stays empty until then.
        config.multiproc_dir.mkdir(parents=True, exist_ok=True)
    reader = DatabaseReader(config.database_url)
    app = ExporterApp(
        build_registry(reader, config.multiproc_dir),
        reader,
        config.multiproc_dir,
        config.heartbeat_max_age,
    )
    try:
        server = serve(app, config.host, config.port)
    except OSError as exc:
        # Another exporter (a second checkout, an earlier run) holds the port: retrying
        # would only fail again.
        return refuse(
            log,
            f"cannot listen on {config.host}:{config.port}: {exc.strerror or exc}; "
            "is another exporter running? METRICS_PORT picks another port",
        )

    def stop(_signum: int, _frame: FrameType | None) -> None:
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    log.info(
        "serving /metrics and /healthz", extra={"host": config.host, "port": server.server_port}
    )
    server.serve_forever()
    server.server_close()
    reader.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
