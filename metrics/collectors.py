"""What /metrics serves: the workers' multiprocess files and the database's state."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from prometheus_client import CollectorRegistry
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from common import schema
from metrics.database import DatabaseReader

log = logging.getLogger("metrics")

PREFIX = "payment_worker_"


class DatabaseCollector(Collector):
    """Queue depth, the oldest waiting job, recent and open payments, unapplied Stripe
    events, expiring authorisations and open refunds, read at scrape time."""

    def __init__(self, reader: DatabaseReader) -> None:
        self._reader = reader

    def collect(self) -> Iterator[Metric]:
        up = GaugeMetricFamily(
            PREFIX + "database_up", "Whether the last scrape could read the database."
        )
        try:
            snapshot = self._reader.snapshot()
        except psycopg.Error as exc:
            error = schema.NOT_DEPLOYED if schema.is_missing(exc) else str(exc)
            log.warning("cannot read the database for metrics", extra={"error": error})
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        yield _labelled(
            "jobs", "Jobs not yet finalized.", ["queue", "kind", "state"], snapshot.jobs
        )
        yield _labelled(
            "oldest_available_job_age_seconds",
            "Age of the oldest job waiting to be claimed (0 when none waits).",
            ["queue"],
            snapshot.oldest_available,
        )
        yield _labelled(
            "payments_recent",
            "Payments created in the last 24 hours, by status.",
            ["status"],
            snapshot.payments,
        )
        yield _single(
            "stripe_events_unapplied",
            "Stripe events recorded whose apply job has not applied (nor ignored) them yet.",
            snapshot.events_unapplied,
        )
        yield _single(
            "oldest_unapplied_event_age_seconds",
            "Age of the oldest Stripe event not yet applied (0 when none waits).",
            snapshot.oldest_unapplied_event_age,
        )
        yield _labelled(
            "payments_open",
            "Payments not yet final (succeeded, canceled, failed), whenever created, by status.",
            ["status"],
            snapshot.payments_open,
        )
        yield _single(
            "authorizations_expiring",
            "Payments in requires_capture whose authorisation expires within 24 hours.",
            snapshot.authorizations_expiring,
        )
        yield _single(
            "authorization_expiry_seconds",
            "Seconds until the soonest of those authorisations expires (0 when none does).",
            snapshot.authorization_expiry_seconds,
        )
        yield _labelled(
            "refunds_open",
            "Refunds Stripe has not finished (pending_refund, pending, requires_action).",
            ["status"],
            snapshot.refunds_open,
        )


def _single(name: str, documentation: str, value: float) -> GaugeMetricFamily:
    gauge = GaugeMetricFamily(PREFIX + name, documentation)
    gauge.add_metric([], value)
    return gauge


def _labelled(
    name: str, documentation: str, labels: list[str], rows: Iterable[Sequence[Any]]
) -> GaugeMetricFamily:
    """One sample per row: the labels' values, then the value."""
    gauge = GaugeMetricFamily(PREFIX + name, documentation, labels=labels)
    for *values, value in rows:
        gauge.add_metric([str(v) for v in values], value)
    return gauge


def build_registry(reader: DatabaseReader, multiproc_dir: Path | None) -> CollectorRegistry:
    registry = CollectorRegistry()
    if multiproc_dir is not None:
        MultiProcessCollector(registry, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    registry.register(DatabaseCollector(reader))
    return registry


def _samples(multiproc_dir: Path, name: str) -> list[tuple[dict[str, str], float]]:
    collector = MultiProcessCollector(None, path=str(multiproc_dir))  # type: ignore[no-untyped-call]
    for metric in collector.collect():  # type: ignore[no-untyped-call]
        if metric.name == name:
            return [(dict(sample.labels), sample.value) for sample in metric.samples]
    return []


def latest_heartbeat(multiproc_dir: Path | None) -> float | None:
    """The newest heartbeat of any live worker, from the multiprocess files."""
    if multiproc_dir is None:
        return None
    values = [value for _, value in _samples(multiproc_dir, PREFIX + "heartbeat_timestamp_seconds")]
    return max(values) if values else None


@dataclass(frozen=True)
class StalledLoop:
    pid: str
    loop: str
    age_seconds: float

    def __str__(self) -> str:
        return f"worker pid {self.pid}: {self.loop} loop silent for {self.age_seconds:.0f} s"


def stalled_loops(multiproc_dir: Path | None, max_age: float, now: float) -> list[StalledLoop]:
    """The loops of live workers whose last beat is older than `max_age`.

    A loop at 0 has ended because its worker is stopping, which is no hang.
    Dead workers' series are gone: the reaper removes their live gauges."""
    if multiproc_dir is None:
        return []
    stalled = [
        StalledLoop(labels.get("pid", "?"), labels.get("loop", "?"), now - beat)
        for labels, beat in _samples(multiproc_dir, PREFIX + "loop_heartbeat_timestamp_seconds")
        if beat > 0 and now - beat > max_age
    ]
    return sorted(stalled, key=lambda s: (s.pid, s.loop))
