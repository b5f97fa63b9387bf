-- Queries on River's job table. Every state change out of `running` is
-- guarded by `state = 'running'`: a job that was rescued, cancelled or
-- finished elsewhere while we held it must not be overwritten by our late
-- answer.

-- name: job_get_available
-- Claims up to %(max_to_lock)s jobs in River's order. SKIP LOCKED lets
-- concurrent workers take different rows instead of queueing behind each
-- other; the claim commits at once, so no row lock outlives it and none is
-- held across a Stripe call. attempted_by keeps River's 100 most recent.
--
-- Each claimed job is also leased: a session-level advisory lock, taken
-- here, in the claim's own transaction, so there is no moment when the job
-- is visibly `running` and unleased. It outlives the commit and is released
-- after the job's outcome commits - or by PostgreSQL itself when this
-- worker's connection dies. A running job without its lease therefore has
-- a dead worker: that is what the rescuer looks for (job_rescue_orphaned).
-- Keys: (lease namespace, id mod 2^31-1), as pg_locks shows them. A try-lock,
-- so a claim never waits: `leased` is false only when another session still
-- holds this job's lease (a stuck worker whose job the time bound rescued),
-- and then the job is simply not rescued again while that session lives.
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
          river_job.created_at,
          pg_try_advisory_lock(%(lease_namespace)s, (river_job.id %% 2147483647)::int) AS leased

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

-- name: job_lease_release
-- After the job's outcome has committed, never before: released earlier, the
-- rescuer could take a job whose answer is on its way.
SELECT pg_advisory_unlock(%(lease_namespace)s, (%(id)s::bigint %% 2147483647)::int)

-- name: job_rescue_orphaned
-- River's rescuer, with death detected directly: a `running` job of our queue
-- whose lease (see job_get_available) nobody holds lost its worker. It runs
-- again at once, or is discarded at max_attempts - and then its payment
-- fails in the same statement, so the waiting RPC answers. The time bound
-- catches the rest: a worker alive but stuck, or cut off behind a half-open
-- connection that PostgreSQL has not noticed yet. FOR UPDATE re-checks
-- `running` on the latest row version, so a job completed (and unleased)
-- after this statement's snapshot is left alone.
WITH orphaned AS (
    SELECT j.id
    FROM metadata.river_job AS j
    WHERE j.state = 'running'
      AND j.queue = %(queue)s
      AND (j.attempted_at < now() - make_interval(secs => %(stuck_after_seconds)s)
           OR NOT EXISTS (
               SELECT 1
               FROM pg_locks AS l
               WHERE l.locktype = 'advisory'
                 AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())
                 AND l.classid = %(lease_namespace)s::int::oid
                 AND l.objid = (j.id %% 2147483647)::oid
                 AND l.objsubid = 2
                 AND l.granted))
    ORDER BY j.id
    LIMIT %(max)s
    FOR UPDATE SKIP LOCKED
),
rescued AS (
    UPDATE metadata.river_job
    SET state = CASE WHEN river_job.attempt >= river_job.max_attempts
                     THEN 'discarded'::metadata.river_job_state
                     ELSE 'available'::metadata.river_job_state END,
        finalized_at = CASE WHEN river_job.attempt >= river_job.max_attempts THEN now() END,
        scheduled_at = now(),
        errors = array_append(river_job.errors, jsonb_build_object(
            'at', now(),
            'attempt', river_job.attempt,
            'error', %(error)s::text,
            'trace', ''))
    FROM orphaned
    WHERE river_job.id = orphaned.id
    RETURNING river_job.id, river_job.state, river_job.kind, river_job.args, river_job.attempt
),
failed AS (
    UPDATE payments.transactions AS p
    SET status = 'failed',
        error_message = format('gave up after %%s attempts: %%s', r.attempt, %(error)s::text)
    FROM rescued AS r
    WHERE r.state = 'discarded'
      AND r.kind = 'create_payment_intent'
      AND p.id = CASE WHEN r.args ->> 'payment_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                      THEN (r.args ->> 'payment_id')::uuid END
      AND p.status = 'pending_intent'
)
SELECT id, state::text AS state, kind, attempt FROM rescued

-- name: job_clean_finalized
SELECT payments.river_job_clean(%(queue)s, now() - make_interval(secs => %(completed_seconds)s),
                                now() - make_interval(secs => %(discarded_seconds)s), %(batch)s)

-- name: leader_try_acquire
-- Maintenance leadership: whoever holds this session lock runs the
-- scheduler, rescuer and cleaner. It dies with its connection, so a dead
-- leader is replaced at the next attempt of any other worker.
SELECT pg_try_advisory_lock(%(lease_namespace)s, -1)

-- name: notify_insert
SELECT pg_notify('metadata.river_insert', jsonb_build_object('queue', %(queue)s::text)::text)

-- name: session_asynchronous_commit
-- For the lease connection, where claims run: a claim's COMMIT returns without
-- waiting for its WAL flush (about 0.2 ms off every wake-up, more when the
-- disk is busy). A claim lost in a server crash costs nothing: the crash ends
-- this session and with it the job's lease, so the job would be rescued and run
-- again anyway - with the same idempotency key, Stripe replays. Outcomes are
-- written on pooled connections, which keep synchronous_commit: a job counts
-- as done only once its completion is durable. Lease releases write no WAL.
SET synchronous_commit = off
