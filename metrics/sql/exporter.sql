-- Read at every scrape, through SECURITY DEFINER aggregates of
-- schema/deploy/worker_api.sql: the exporter runs as a payment_worker (or
-- payment_monitor) login, which may read no table. Each is bounded by an
-- index, and the exporter's connection has a statement_timeout so a slow
-- database degrades a scrape, never the workers.

-- name: jobs_unfinished
-- Finalized jobs are left out: their count grows without bound, and their
-- rates come from the workers' counters.
SELECT queue, kind, state, jobs FROM payments.job_unfinished_counts()

-- name: job_oldest_available_age
-- Our queue always has a value (0 when nothing waits).
SELECT queue, age_seconds FROM payments.job_oldest_available_age()

-- name: payments_recent_by_status
SELECT status, payments FROM payments.payment_recent_counts()

-- name: ping
SELECT 1

-- name: stripe_events_unapplied
-- Events whose apply job has not applied them, and the oldest one's age (0
-- when none waits, so the alert on it always has a series).
SELECT events, oldest_age_seconds FROM payments.stripe_event_unapplied()

-- name: payments_open_by_status
-- Payments not yet final, whenever created; each open status has a row.
SELECT status, payments FROM payments.payment_open_counts()

-- name: authorizations_expiring
-- Uncaptured authorisations whose capture_before is within the given seconds,
-- and the seconds to the soonest (0 when none: the alert always has a series).
SELECT payments, soonest_seconds FROM payments.payment_authorization_expiring(%(within)s)

-- name: refunds_open_by_status
-- Refunds Stripe has not finished; each open status has a row.
SELECT status, refunds FROM payments.refund_open_counts()
