-- The worker's side of River's job table. Each query calls a SECURITY
-- DEFINER function of schema/deploy/worker_api.sql: the worker role has no
-- table privileges, and every function is confined to payments.config.queue.
-- Outcomes name the job, its attempt and the lease token the claim returned:
-- only the attempt that holds the job can finish it.

-- name: job_get_available
-- Runs on the dedicated lease connection: each claimed job's lease row names
-- this session, and dies with it.
-- Nothing while River UI or a River client has paused our queue. Each job's
-- wait lock (schema/deploy/woken_wait.sql) is taken on this session too.
SELECT id, kind, args, attempt, max_attempts, priority, scheduled_at, created_at, lease_token,
       error_count, wait_locked
FROM payments.job_claim_woken(%(max_to_lock)s, %(attempted_by)s)

-- name: job_wake
-- On the lease connection, after the jobs' outcomes have committed: wakes the RPCs
-- waiting for them.
SELECT payments.job_wake(%(ids)s::bigint[]) AS woken

-- name: job_set_completed_if_running
SELECT payments.job_complete(%(id)s, %(attempt)s, %(lease)s) AS ours

-- name: job_set_retryable_if_running
SELECT payments.job_retry(%(id)s, %(attempt)s, %(lease)s, %(error)s::jsonb, %(delay_seconds)s) AS ours

-- name: job_set_discarded_if_running
-- The kind's given-up effect (a failed payment) runs in the same transaction,
-- from the trigger river_job_given_up.
SELECT payments.job_discard(%(id)s, %(attempt)s, %(lease)s, %(error)s::jsonb) AS ours

-- name: job_schedule_due
SELECT payments.job_schedule_due(%(max)s) AS scheduled

-- name: job_rescue_orphaned
SELECT id, state, kind, attempt, retry_in_seconds
FROM payments.job_rescue_orphaned(%(stuck_after_seconds)s, %(max)s, %(error)s)

-- name: job_kind_list
SELECT kind, given_up FROM payments.job_kind_list()

-- name: queue_touch
SELECT payments.queue_touch() AS paused

-- name: job_clean_finalized
SELECT payments.job_clean_finalized(%(completed_seconds)s, %(discarded_seconds)s, %(batch)s)

-- name: leader_elect
-- Maintenance leadership: takes it when vacant, expired or its holder's
-- backend is gone; renews it when this session holds it already.
SELECT payments.leader_elect(%(leader_id)s, %(ttl_seconds)s) AS elected

-- name: leader_resign
SELECT payments.leader_resign()

-- name: notify_insert
SELECT pg_notify('metadata.river_insert', jsonb_build_object('queue', %(queue)s::text)::text)

-- name: session_asynchronous_commit
-- For the lease connection, where claims run: a claim's COMMIT returns without
-- waiting for its WAL flush (about 0.2 ms off every wake-up, more when the
-- disk is busy). A claim lost in a server crash costs nothing: the crash ends
-- this session and with it the job's lease, so the job would be rescued and run
-- again anyway - with the same idempotency key, Stripe replays. Outcomes are
-- written on pooled connections, which keep synchronous_commit: a job counts
-- as done only once its completion is durable.
SET synchronous_commit = off
