"""The worker's Prometheus metrics.

Under supervisord PROMETHEUS_MULTIPROC_DIR is set, so prometheus-client keeps
each value in a per-process file that the exporter (`python -m metrics`)
reads and sums; recording is a write to a memory-mapped file, never a wait
on anything outside the process. Without the variable (tests, a lone
`python -m worker`) the values simply live in memory."""

from __future__ import annotations

import time

from prometheus_client import Counter, Gauge, Histogram

PREFIX = "payment_worker_"

# From a few ms (the stand-in, a warm connection) to Stripe's read timeout.
_SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)

STRIPE_REQUEST_DURATION = Histogram(
    PREFIX + "stripe_request_duration_seconds",
    "Duration of Stripe API requests.",
    ["operation", "outcome"],
    buckets=_SECONDS,
)
STRIPE_ERRORS = Counter(
    PREFIX + "stripe_errors_total", "Failed Stripe API requests, by SDK error class.", ["type"]
)
JOBS_FINISHED = Counter(
    PREFIX + "jobs_finished_total",
    "Job attempts finished, by outcome (completed, retried, discarded).",
    ["kind", "outcome"],
)
JOB_DURATION = Histogram(
    PREFIX + "job_duration_seconds",
    "Duration of one job attempt, claim to recorded outcome.",
    ["kind", "outcome"],
    buckets=_SECONDS,
)
PAYMENT_LATENCY = Histogram(
    PREFIX + "payment_latency_seconds",
    "From the payment's insert to its PaymentIntent being stored (status pending).",
    buckets=(0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 120.0, 600.0),
)
EVENT_APPLY = Histogram(
    PREFIX + "event_apply_seconds",
    "From a Stripe event's receipt (received_at) to its application to the payment.",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0),
)
OBSERVATIONS = Counter(
    PREFIX + "payment_observations_total",
    "PaymentIntents read from Stripe and offered to the payment, by job kind and result"
    " (written, stale, refused, ignored).",
    ["kind", "result"],
)
RECONCILE_QUEUED = Counter(
    PREFIX + "reconcile_queued_total",
    "sync_payment jobs the reconciler queued for payments not reflecting Stripe for too long.",
)
BACKFILLED = Counter(
    PREFIX + "backfill_events_total",
    "Events found in Stripe's event list that we did not hold, recorded by the backfill.",
)
JOBS_RESCUED = Counter(
    PREFIX + "jobs_rescued_total", "Jobs taken back from a dead or stuck worker.", ["queue"]
)
WORKERS_UP = Gauge(PREFIX + "workers_up", "Live worker processes.", multiprocess_mode="livesum")
HEARTBEAT = Gauge(
    PREFIX + "heartbeat_timestamp_seconds",
    "Last sign of life of any live worker (unix time).",
    multiprocess_mode="livemax",
)


# One series per loop and live process (the exporter adds `pid`): a loop that stops
# going round, stuck or dead, shows as its own stale timestamp while the others
# keep beating. 0 means the loop ended because the worker is stopping.
LOOP_HEARTBEAT = Gauge(
    PREFIX + "loop_heartbeat_timestamp_seconds",
    "Last time each background loop of a live worker went round (unix time; 0 once ended).",
    ["loop"],
    multiprocess_mode="liveall",
)

# How often every loop beats at least, however long its own interval: well
# inside METRICS_HEARTBEAT_MAX_AGE.
BEAT_INTERVAL = 1.0


def beat() -> None:
    HEARTBEAT.set(time.time())


def beat_pause(due: float) -> float:
    """How long a loop may sleep before its next beat or its work due at `due`
    (time.monotonic()), whichever comes first."""
    return min(BEAT_INTERVAL, max(0.0, due - time.monotonic()))


def loop_beat(loop: str) -> None:
    LOOP_HEARTBEAT.labels(loop).set(time.time())


def loop_ended(loop: str) -> None:
    LOOP_HEARTBEAT.labels(loop).set(0)
