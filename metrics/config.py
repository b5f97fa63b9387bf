"""Exporter settings from the environment."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psycopg.conninfo

from common.dburl import ConninfoError, check_conninfo


class ConfigError(ValueError):
    """A setting is missing or malformed; the message never holds a secret."""


@dataclass(frozen=True)
class ExporterConfig:
    database_url: str = field(repr=False)
    host: str
    port: int
    multiproc_dir: Path | None
    heartbeat_max_age: float

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> ExporterConfig:
        env = os.environ if env is None else env
        url = env.get("DATABASE_URL", "").strip()
        if not url:
            raise ConfigError("DATABASE_URL is required")
        try:
            check_conninfo(url, "DATABASE_URL")
        except ConninfoError as exc:
            raise ConfigError(str(exc)) from None
        raw_port = env.get("METRICS_PORT", "9187").strip()
        if not raw_port.isdigit() or not 0 <= int(raw_port) <= 65535:
            raise ConfigError(f"METRICS_PORT must be a port number, got {raw_port!r}")
        raw_age = env.get("METRICS_HEARTBEAT_MAX_AGE", "30").strip()
        try:
            age = float(raw_age)
        except ValueError:
            raise ConfigError(
                f"METRICS_HEARTBEAT_MAX_AGE must be seconds, got {raw_age!r}"
            ) from None
        if age <= 0:
            raise ConfigError(f"METRICS_HEARTBEAT_MAX_AGE must be positive, got {age:g}")
        multiproc = env.get("PROMETHEUS_MULTIPROC_DIR", "").strip()
        return cls(
            database_url=url,
            # Loopback unless told otherwise: the container images set 0.0.0.0 themselves.
            host=env.get("METRICS_HOST", "").strip() or "127.0.0.1",
            port=int(raw_port),
            multiproc_dir=Path(multiproc) if multiproc else None,
            heartbeat_max_age=age,
        )

    @property
    def database_password(self) -> str:
        return str(psycopg.conninfo.conninfo_to_dict(self.database_url).get("password") or "")
