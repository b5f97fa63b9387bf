"""What /metrics serves: the workers' multiprocess files and the database's state."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from metrics.database import DatabaseReader

log = logging.getLogger("metrics")

PREFIX = "payment_worker_"


class DatabaseCollector(Collector):
    """Queue depth, the oldest waiting job and recent payments, read at scrape time."""

    def __init__(self, reader: DatabaseReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "database_up", "Whether the last scrape could read the database."
        )
        try:
            snapshot = self._reader.snapshot()
        except psycopg.Error as exc:
            log.warning("cannot read the database for metrics", extra={"error": str(exc)})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        jobs = GaugeMetricFamily(
            PREFIX + "jobs", "Jobs not yet finalized.", labels=["queue", "kind", "state"]
        )
        for queue, kind, state, count in snapshot.jobs:
            jobs.add_metric([queue, kind, state], count)
        yield jobs
        oldest = GaugeMetricFamily(
            PREFIX + "oldest_available_job_age_seconds",
            "Age of the oldest job waiting to be claimed (0 when none waits).",
            labels=["queue"],
        )
        for queue, age in snapshot.oldest_available:
            oldest.add_metric([queue], age)
        yield oldest
        payments = GaugeMetricFamily(
            PREFIX + "payments_recent",
            "Payments created in the last 24 hours, by status.",
            labels=["status"],
        )
        for status, count in snapshot.payments:
            payments.add_metric([status], count)
        yield payments


def build_registry(reader: DatabaseReader, multiproc_dir: Path | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if multiproc_dir is not None:
        MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(DatabaseCollector(reader))
    return registry


def latest_heartbeat(multiproc_dir: Path | None) -> float | None:
    """The newest heartbeat of any live worker, from the multiprocess files."""
    if multiproc_dir is None:
        return None
    collector = MultiProcessCollector(None, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    for metric in collector.collect():  # type: ignore[no-untyped-call]
        if metric.name == PREFIX + "heartbeat_timestamp_seconds":
            values = [sample.value for sample in metric.samples]
            return max(values) if values else None
    return None
