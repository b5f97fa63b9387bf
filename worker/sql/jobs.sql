-- Queries on River's job table. Every state change out of `running` is
-- guarded by `state = 'running'`: a job that was rescued, cancelled or
-- finished elsewhere while we held it must not be overwritten by our late
-- answer.

-- name: job_get_available
-- Claims up to %(max_to_lock)s jobs in River's order. SKIP LOCKED lets
-- concurrent workers take different rows instead of queueing behind each
-- other; the claim commits at once, so no row lock outlives it and none is
-- held across a Stripe call. attempted_by keeps River's 100 most recent.
WITH locked_jobs AS (
    SELECT id
    FROM metadata.river_job
    WHERE state = 'available'
      AND queue = %(queue)s
      AND scheduled_at <= now()
    ORDER BY priority, scheduled_at, id
    LIMIT %(max_to_lock)s
    FOR UPDATE SKIP LOCKED
)
UPDATE metadata.river_job
SET state = 'running',
    attempt = river_job.attempt + 1,
    attempted_at = now(),
    attempted_by = array_append(
        CASE WHEN array_length(river_job.attempted_by, 1) >= 100
             THEN river_job.attempted_by[array_length(river_job.attempted_by, 1) - 98:]
             ELSE river_job.attempted_by
        END,
        %(attempted_by)s::text)
FROM locked_jobs
WHERE river_job.id = locked_jobs.id
RETURNING river_job.id, river_job.kind, river_job.args, river_job.attempt,
          river_job.max_attempts, river_job.priority, river_job.scheduled_at,
          river_job.created_at

-- name: job_set_completed_if_running
UPDATE metadata.river_job
SET state = 'completed', finalized_at = now()
WHERE id = %(id)s AND state = 'running'

-- name: job_set_retryable_if_running
UPDATE metadata.river_job
SET state = 'retryable',
    scheduled_at = now() + make_interval(secs => %(delay_seconds)s),
    errors = array_append(errors, %(error)s::jsonb)
WHERE id = %(id)s AND state = 'running'

-- name: job_set_discarded_if_running
UPDATE metadata.river_job
SET state = 'discarded',
    finalized_at = now(),
    errors = array_append(errors, %(error)s::jsonb)
WHERE id = %(id)s AND state = 'running'

-- name: job_schedule_due
-- What River's leader does with its scheduler: retryable and scheduled jobs
-- whose time has come become available. SKIP LOCKED makes concurrent
-- schedulers in several workers harmless. The UPDATE fires no insert
-- trigger, so the workers are notified here, once per queue.
WITH due AS (
    SELECT id
    FROM metadata.river_job
    WHERE state IN ('retryable', 'scheduled')
      AND queue = %(queue)s
      AND scheduled_at <= now()
    ORDER BY priority, scheduled_at, id
    LIMIT %(max)s
    FOR UPDATE SKIP LOCKED
),
made_available AS (
    UPDATE metadata.river_job
    SET state = 'available'
    FROM due
    WHERE river_job.id = due.id
    RETURNING river_job.queue
)
SELECT count(*) AS scheduled,
       pg_notify('metadata.river_insert', jsonb_build_object('queue', %(queue)s::text)::text)
FROM made_available
HAVING count(*) > 0
