"""JSON logs, one object per line, with secrets scrubbed before they are written."""

from __future__ import annotations

import codecs
import io
import logging
import os
import re
import sys
from collections.abc import Iterable
from typing import TextIO

from pythonjsonlogger.json import JsonFormatter

# Shapes of secrets that must never reach a log, whatever code logged them:
# Stripe keys (masked ones too: Stripe's errors quote `sk_test_****9999`),
# PaymentIntent client secrets, passwords in connection URLs (up to the last
# @: an unencoded password may hold more) and in key=value connection strings.
_SECRET_PATTERNS = (
    re.compile(r"\b(?:sk|rk)_(?:test|live)_[A-Za-z0-9_*]*"),
    re.compile(r"\bpi_[A-Za-z0-9]+_secret_[A-Za-z0-9]+"),
    re.compile(r"(?<=://)[^:/@\s]+:\S*(?=@)"),
    re.compile(r"(?i)\bpassword\s*=\s*\S+"),
)


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub("[redacted]", text)
    return text


class RedactingJsonFormatter(JsonFormatter):
    """Formats as JSON, then removes known secret values and secret shapes."""

    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__(
            "{asctime}{levelname}{name}{message}{process}",
            style="{",
            rename_fields={
                "asctime": "ts",
                "levelname": "level",
                "name": "logger",
                "message": "msg",
                "process": "pid",
            },
            static_fields={"process_name": os.environ.get("SUPERVISOR_PROCESS_NAME", "worker")},
            datefmt="%Y-%m-%dT%H:%M:%S%z",
            # "…" as itself, not \u2026: a log line is for people too.
            json_ensure_ascii=False,
        )
        self._secrets = tuple(s for s in secrets if s)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record), self._secrets)


def configure(
    level: str = "INFO", secrets: Iterable[str] = (), stream: TextIO | None = None
) -> None:
    """Routes every logger to stdout (or `stream`) as JSON; the SDKs' chatter stays at WARNING."""
    stream = stream or sys.stdout
    if isinstance(stream, io.TextIOWrapper) and codecs.lookup(stream.encoding).name != "utf-8":
        # A non-UTF-8 locale (LANG=C on an old libc): escape what it cannot encode
        # rather than lose the line to a UnicodeEncodeError.
        stream.reconfigure(errors="backslashreplace")
    handler = logging.StreamHandler(stream)
    handler.setFormatter(RedactingJsonFormatter(secrets))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for noisy in ("stripe", "urllib3", "psycopg", "psycopg.pool"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
