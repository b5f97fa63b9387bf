"""The receiver's Prometheus metrics.

Under supervisord PROMETHEUS_MULTIPROC_DIR is set and the exporter (`python -m metrics`)
serves them with the workers'. Every metric has labels, so no value file is written before
the first request: worker-scaler empties that directory once, as supervisord starts, and a
file made before that would be lost."""

from __future__ import annotations

from prometheus_client import Counter, Histogram

PREFIX = "payment_worker_"

EVENTS = Counter(
    PREFIX + "webhook_events_total",
    "Verified Stripe events received, by type and outcome (stored, duplicate, ignored).",
    ["type", "outcome"],
)
REJECTIONS = Counter(
    PREFIX + "webhook_rejections_total",
    "Webhook requests refused before anything was stored, by reason.",
    ["reason"],
)
# From a warm local commit (about a millisecond) to the request's own time limits.
REQUEST_SECONDS = Histogram(
    PREFIX + "webhook_request_seconds",
    "Time from a webhook request's arrival to its answer, by HTTP status code.",
    ["code"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
