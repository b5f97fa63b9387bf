"""`python -m webhooks`: the Stripe webhook receiver supervisord runs as program `webhooks`."""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

import uvicorn

from common import jsonlog
from common.envconfig import ConfigError
from common.supervisor import refuse
from webhooks.app import PATH, build_app
from webhooks.config import WebhookConfig
from webhooks.server import server_config
from webhooks.store import EventStore


def _already_stopping(_signum: int, _frame: FrameType | None) -> None:
    """After uvicorn's own shutdown: nothing is left to do but return."""


def _drop_colour(record: logging.LogRecord) -> bool:
    """uvicorn adds an ANSI-coloured copy of some messages; the JSON line has the plain one."""
    record.__dict__.pop("color_message", None)
    return True


def main() -> int:
    try:
        config = WebhookConfig.from_env()
    except ConfigError as exc:
        jsonlog.configure("INFO")
        return refuse(logging.getLogger("webhooks"), f"invalid configuration: {exc}")
    jsonlog.configure(config.log_level, secrets=config.secrets())
    log = logging.getLogger("webhooks")
    logging.getLogger("uvicorn.error").addFilter(_drop_colour)
    store = EventStore(config.database_url, config.pool_size)
    app = build_app(store, config.webhook_secrets, config.livemode)
    server = uvicorn.Server(server_config(app, config.host, config.port))
    log.info(
        "receiving Stripe webhooks",
        extra={
            "host": config.host,
            "port": config.port,
            "path": PATH,
            "livemode": config.livemode,
            "signing_secrets": len(config.webhook_secrets),
        },
    )
    # uvicorn handles SIGTERM/SIGINT itself: it stops accepting, finishes the requests in
    # hand (GRACEFUL_SHUTDOWN_SECONDS at most), then runs the lifespan's pool close. Then
    # it raises the signal again for the handler it found: this one, so that we exit 0.
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, _already_stopping)
    server.run()
    if not server.started:
        log.critical("could not start: see the error above")
        return 1
    log.info("receiver stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
