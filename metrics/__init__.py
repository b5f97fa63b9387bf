"""payment-worker's Prometheus exporter: `python -m metrics`.

Serves /metrics (the workers' own metrics, summed across processes from
prometheus-client's multiprocess files, plus the queue and payments read from
the database at scrape time) and /healthz. Imports nothing from worker/."""
