-- Read at every scrape: each is bounded by an index, and the exporter's
-- connection has a statement_timeout so a slow database degrades a scrape,
-- never the workers.

-- name: jobs_unfinished
-- Finalized jobs (completed, discarded, cancelled) are left out: their count
-- grows without bound, and their rates come from the workers' counters.
SELECT queue, kind, state::text AS state, count(*) AS jobs
FROM metadata.river_job
WHERE state IN ('available', 'running', 'retryable', 'scheduled', 'pending')
GROUP BY queue, kind, state

-- name: job_oldest_available_age
-- The payments queue always has a value (0 when nothing waits), so an alert
-- on it never goes quiet for lack of a series.
SELECT queue, coalesce(max(age_seconds), 0)::float8 AS age_seconds
FROM (
    SELECT queue, extract(epoch FROM now() - min(scheduled_at)) AS age_seconds
    FROM metadata.river_job
    WHERE state = 'available' AND scheduled_at <= now()
    GROUP BY queue
    UNION ALL
    SELECT queue, NULL FROM payments.config
) AS ages
GROUP BY queue

-- name: payments_recent_by_status
SELECT status, count(*) AS payments
FROM payments.transactions
WHERE created_at > now() - interval '24 hours'
GROUP BY status

-- name: ping
SELECT 1
