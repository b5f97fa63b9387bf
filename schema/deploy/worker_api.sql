-- Deploy payment_worker:worker_api
-- requires: payments_security
-- requires: river_job_clean
-- The worker role through functions, not tables (README: "Roles and grants").
--
-- payment_worker loses every table privilege. What a worker does - read its
-- settings, claim from our queue, read and answer the payment of a job it
-- holds, finish that job, and the leader's maintenance - is a SECURITY
-- DEFINER function below, confined to payments.config.queue. A stolen worker
-- login can therefore neither read a client secret or the config, nor touch
-- another queue's jobs, nor move a payment it is not working on.
--
-- Leases and leadership are rows in tables only these functions change,
-- naming the backend (pid and its start time, so a reused pid is not the same
-- session) that holds them. The advisory locks they replace could be taken,
-- and so blocked or faked, by any role that can connect.

BEGIN;

-- Liveness is read from pg_stat_activity: the functions' owner must see
-- every session's backend_start, not only its own.
DO $check$
BEGIN
    IF NOT (SELECT r.rolsuper FROM pg_catalog.pg_roles AS r WHERE r.rolname = current_user)
       AND NOT pg_catalog.pg_has_role(current_user, 'pg_read_all_stats', 'USAGE') THEN
        RAISE EXCEPTION 'the deploying role % cannot see other sessions in pg_stat_activity', current_user
            USING HINT = format('GRANT pg_read_all_stats TO %I; then deploy again.', current_user);
    END IF;
END
$check$;

-- The cleaner keeps finished jobs at least this long, whatever a worker asks.
ALTER TABLE payments.config
    ADD COLUMN min_job_retention interval NOT NULL DEFAULT '1 hour'
        CONSTRAINT min_job_retention_positive CHECK (min_job_retention > '0'::interval);

-- One row per job a worker holds. UNLOGGED: after a crash every backend is
-- gone anyway, and an empty table says exactly that.
CREATE UNLOGGED TABLE payments.job_lease (
    job_id bigint PRIMARY KEY,
    attempt smallint NOT NULL,
    -- Returned to the claimer only: the capability an outcome must present.
    token uuid NOT NULL,
    backend_pid integer NOT NULL,
    backend_start timestamptz NOT NULL
);

-- Our own leader, not River's metadata.river_leader: a Go River client on the
-- same schema elects its leader there.
CREATE UNLOGGED TABLE payments.worker_leader (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    leader_id text NOT NULL CHECK (char_length(leader_id) > 0 AND char_length(leader_id) < 128),
    backend_pid integer NOT NULL,
    backend_start timestamptz NOT NULL,
    elected_at timestamptz NOT NULL,
    expires_at timestamptz NOT NULL
);

-- --- internal helpers (no grants) ----------------------------------------------------------

CREATE FUNCTION payments.backend_alive(p_pid integer, p_started timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT EXISTS (
            SELECT 1 FROM pg_catalog.pg_stat_get_activity(p_pid) AS a
            WHERE a.pid = p_pid AND a.backend_start = p_started)
    );
END
$$;

CREATE FUNCTION payments.backend_start() RETURNS timestamptz
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT a.backend_start FROM pg_catalog.pg_stat_get_activity(pg_catalog.pg_backend_pid()) AS a
    );
END
$$;

CREATE FUNCTION payments.require(p_ok boolean, p_message text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ok IS NOT TRUE THEN
        RAISE EXCEPTION '%', p_message USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

CREATE FUNCTION payments.config_queue() RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT c.queue FROM payments.config AS c
    );
END
$$;

-- The payment a create_payment_intent job is for; NULL for anything else.
CREATE FUNCTION payments.job_payment_id(p_kind text, p_args jsonb) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT CASE WHEN p_kind = 'create_payment_intent'
                     AND p_args ->> 'payment_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                    THEN (p_args ->> 'payment_id')::uuid END
    );
END
$$;

-- Whether this attempt holds the running job of our queue: its lease row
-- names this attempt and token, and the backend that claimed it is alive.
-- An outcome from an attempt whose lease backend has died is refused even
-- before the rescuer gets to the job: the rescuer owns that job now, and a
-- newer attempt must never be overwritten by an older one.
CREATE FUNCTION payments.job_held(p_job_id bigint, p_attempt integer, p_lease uuid) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT EXISTS (
            SELECT 1
            FROM metadata.river_job AS j
            JOIN payments.job_lease AS l ON l.job_id = j.id AND l.attempt = j.attempt
            WHERE j.id = p_job_id AND j.attempt = p_attempt AND j.state = 'running'
              AND j.queue = payments.config_queue()
              AND l.token = p_lease
              AND payments.backend_alive(l.backend_pid, l.backend_start))
    );
END
$$;

-- For an outcome: locks the job row (the rescuer skips locked rows, so the
-- two never deadlock), checks the lease and gives it up. False changes nothing.
CREATE FUNCTION payments.job_release(p_job_id bigint, p_attempt integer, p_lease uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM 1 FROM metadata.river_job AS j
    WHERE j.id = p_job_id AND j.attempt = p_attempt AND j.state = 'running'
      AND j.queue = payments.config_queue()
    FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM payments.job_lease AS l
    WHERE l.job_id = p_job_id AND l.attempt = p_attempt AND l.token = p_lease
      AND payments.backend_alive(l.backend_pid, l.backend_start);
    RETURN FOUND;
END
$$;

CREATE FUNCTION payments.job_error_validate(p_error jsonb) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.require(jsonb_typeof(p_error) = 'object',
                             'error must be a JSON object ({"at", "attempt", "error", "trace"})');
END
$$;

-- River's DefaultClientRetryPolicy, as worker/backoff.py: n^4 s +-10 %, n being
-- len(errors) + 1; bounded only where Go's time.Duration would overflow.
CREATE FUNCTION payments.retry_delay_seconds(p_error_count integer) RETURNS float8
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_max constant float8 := 9223372036.854775807;
    v_base constant float8 := least(power(greatest(p_error_count, 1)::float8, 4), v_max);
BEGIN
    IF v_base = v_max THEN
        RETURN v_max;
    END IF;
    RETURN least(v_base + v_base * (random() * 0.2 - 0.1), v_max);
END
$$;

-- --- job kinds and what giving one up means ------------------------------------------------

-- Every kind our workers run, with the function applied when one of its jobs
-- in our queue is given up: discarded or cancelled (by our executor, our
-- rescuer, a River client's rescuer, River UI) or deleted unfinished. The
-- function takes (job id, args, the caller_message of its last error or NULL).
-- A worker refuses to start when its registered kinds disagree with this table.
CREATE TABLE payments.job_kind (
    kind text PRIMARY KEY CHECK (char_length(kind) > 0 AND char_length(kind) < 128),
    given_up regproc
);

-- create_payment_intent given up: its payment, if it still waits for its
-- intent, fails. The caller reads the card's message when the last error
-- carried one, else worker/handlers.py caller_reason()'s words.
CREATE FUNCTION payments.create_payment_intent_given_up(
    p_job_id bigint, p_args jsonb, p_caller_message text
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE payments.transactions AS p
    SET status = 'failed',
        error_message = coalesce(
            left(nullif(p_caller_message, ''), 5000),
            format('the payment could not be created (payment %s); the operator has the details', p.id))
    WHERE p.id = payments.job_payment_id('create_payment_intent', p_args)
      AND p.status = 'pending_intent';
END
$$;

INSERT INTO payments.job_kind (kind, given_up)
VALUES ('create_payment_intent', 'payments.create_payment_intent_given_up');

-- SECURITY DEFINER: the role that discarded the job (a River client's login)
-- needs no privilege on our payments for the effect to apply.
CREATE FUNCTION payments.job_given_up() RETURNS trigger
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id bigint;
    v_kind text;
    v_queue text;
    v_args jsonb;
    v_errors jsonb[];
    v_effect regproc;
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT OLD.id, OLD.kind, OLD.queue, OLD.args, OLD.errors
        INTO v_id, v_kind, v_queue, v_args, v_errors;
    ELSE
        SELECT NEW.id, NEW.kind, NEW.queue, NEW.args, NEW.errors
        INTO v_id, v_kind, v_queue, v_args, v_errors;
    END IF;
    IF v_queue IS DISTINCT FROM payments.config_queue() THEN
        RETURN NULL;
    END IF;
    SELECT k.given_up INTO v_effect FROM payments.job_kind AS k WHERE k.kind = v_kind;
    IF v_effect IS NOT NULL THEN
        EXECUTE format('SELECT %s($1, $2, $3)', v_effect)
        USING v_id, v_args, v_errors[cardinality(v_errors)] ->> 'caller_message';
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER river_job_given_up
    AFTER UPDATE OF state ON metadata.river_job
    FOR EACH ROW
    WHEN (NEW.state IN ('discarded', 'cancelled') AND OLD.state NOT IN ('discarded', 'cancelled'))
    EXECUTE FUNCTION payments.job_given_up();

CREATE TRIGGER river_job_deleted_unfinished
    AFTER DELETE ON metadata.river_job
    FOR EACH ROW
    WHEN (OLD.state NOT IN ('completed', 'discarded', 'cancelled'))
    EXECUTE FUNCTION payments.job_given_up();

-- --- our queue, as River sees queues ---------------------------------------------------------

-- Our queue's row, so River UI lists it and can pause it. River's queue
-- cleaner deletes rows not updated for 24 h: the leader keeps it fresh
-- (payments.queue_touch), as River's producers do theirs.
INSERT INTO metadata.river_queue (name, updated_at)
SELECT c.queue, now() FROM payments.config AS c
ON CONFLICT (name) DO NOTHING;

-- --- what a worker calls -------------------------------------------------------------------

CREATE FUNCTION payments.worker_settings() RETURNS TABLE (currency text, queue text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT c.currency, c.queue FROM payments.config AS c;
END
$$;

-- River's claim, on our queue only. SKIP LOCKED lets concurrent workers take
-- different rows instead of queueing behind each other. attempted_by keeps
-- River's 100 most recent. In the same statement each job gets its lease row,
-- naming this backend: called on the worker's dedicated lease connection,
-- whose session's life is the lease.
CREATE FUNCTION payments.job_claim(p_max integer, p_attempted_by text)
RETURNS TABLE (
    id bigint, kind text, args jsonb, attempt smallint, max_attempts smallint,
    priority smallint, scheduled_at timestamptz, created_at timestamptz, lease_token uuid,
    error_count integer
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue constant text := payments.config_queue();
    v_pid constant integer := pg_backend_pid();
    v_started constant timestamptz := payments.backend_start();
BEGIN
    PERFORM payments.require(p_max BETWEEN 1 AND 1000, 'max must be between 1 and 1000');
    PERFORM payments.require(char_length(p_attempted_by) BETWEEN 1 AND 255,
                             'attempted_by must be 1 to 255 characters');
    RETURN QUERY
    WITH locked_jobs AS (
        SELECT j.id
        FROM metadata.river_job AS j
        WHERE j.state = 'available'
          AND j.queue = v_queue
          AND j.scheduled_at <= now()
          -- River UI's or a River client's pause of our queue (paused_at set,
          -- '*' included) holds our claims too, until it is resumed.
          AND NOT EXISTS (
              SELECT 1 FROM metadata.river_queue AS q
              WHERE q.name = v_queue AND q.paused_at IS NOT NULL)
        ORDER BY j.priority, j.scheduled_at, j.id
        LIMIT p_max
        FOR UPDATE SKIP LOCKED
    ),
    claimed AS (
        UPDATE metadata.river_job AS j
        SET state = 'running',
            attempt = j.attempt + 1,
            attempted_at = now(),
            attempted_by = array_append(
                CASE WHEN array_length(j.attempted_by, 1) >= 100
                     THEN j.attempted_by[array_length(j.attempted_by, 1) - 98:]
                     ELSE j.attempted_by
                END,
                p_attempted_by)
        FROM locked_jobs
        WHERE j.id = locked_jobs.id
        RETURNING j.id, j.kind, j.args, j.attempt, j.max_attempts, j.priority,
                  j.scheduled_at, j.created_at, gen_random_uuid() AS token,
                  coalesce(cardinality(j.errors), 0) AS error_count
    ),
    leased AS (
        INSERT INTO payments.job_lease AS l (job_id, attempt, token, backend_pid, backend_start)
        SELECT c.id, c.attempt, c.token, v_pid, v_started FROM claimed AS c
        -- A row left by a job finished outside our functions is stale: replaced.
        ON CONFLICT (job_id) DO UPDATE
        SET attempt = EXCLUDED.attempt, token = EXCLUDED.token,
            backend_pid = EXCLUDED.backend_pid, backend_start = EXCLUDED.backend_start
    )
    -- Unreferenced, leased still runs, in this statement (data-modifying CTE).
    SELECT c.id, c.kind, c.args, c.attempt, c.max_attempts, c.priority,
           c.scheduled_at, c.created_at, c.token, c.error_count
    FROM claimed AS c;
END
$$;

-- The job's payment, without its client secret, while this attempt holds the job.
CREATE FUNCTION payments.job_payment_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    id uuid, amount bigint, currency text, description text, status text, provider_payment_id text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT p.id, p.amount, p.currency, p.description, p.status, p.provider_payment_id
        FROM metadata.river_job AS j
        JOIN payments.transactions AS p ON p.id = payments.job_payment_id(j.kind, j.args)
        WHERE j.id = p_job_id
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;

-- Outcomes: each only for the attempt that holds the job (payments.job_held),
-- and each gives the lease up in the same transaction.

CREATE FUNCTION payments.job_complete(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN false;
    END IF;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN true;
END
$$;

CREATE FUNCTION payments.job_retry(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_error jsonb, p_delay_seconds float8
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.job_error_validate(p_error);
    PERFORM payments.require(p_delay_seconds >= 0 AND p_delay_seconds < 'infinity'::float8,
                             'delay_seconds must be a finite, non-negative number of seconds');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN false;
    END IF;
    UPDATE metadata.river_job
    SET state = 'retryable',
        scheduled_at = now() + make_interval(secs => p_delay_seconds),
        errors = array_append(errors, p_error)
    WHERE id = p_job_id;
    RETURN true;
END
$$;

-- The kind's given-up effect follows from the trigger river_job_given_up.
CREATE FUNCTION payments.job_discard(p_job_id bigint, p_attempt integer, p_lease uuid, p_error jsonb)
RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.job_error_validate(p_error);
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN false;
    END IF;
    UPDATE metadata.river_job
    SET state = 'discarded', finalized_at = now(), errors = array_append(errors, p_error)
    WHERE id = p_job_id;
    RETURN true;
END
$$;

-- Stores the intent on the job's payment if it is pending_intent and completes
-- the job, together. latency_seconds: insert to now, when this call is what
-- moved the payment to pending.
CREATE FUNCTION payments.job_complete_with_intent(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_provider_payment_id text, p_client_secret text
) RETURNS TABLE (completed boolean, latency_seconds float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_latency float8;
BEGIN
    PERFORM payments.require(char_length(p_provider_payment_id) BETWEEN 1 AND 255,
                             'provider_payment_id must be 1 to 255 characters');
    PERFORM payments.require(char_length(p_client_secret) BETWEEN 1 AND 255,
                             'client_secret must be 1 to 255 characters');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::float8;
        RETURN;
    END IF;
    UPDATE payments.transactions AS p
    SET status = 'pending',
        provider_payment_id = p_provider_payment_id,
        provider_client_secret = p_client_secret
    FROM metadata.river_job AS j
    WHERE j.id = p_job_id
      AND p.id = payments.job_payment_id(j.kind, j.args)
      AND p.status = 'pending_intent'
    RETURNING extract(epoch FROM clock_timestamp() - p.created_at)::float8 INTO v_latency;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_latency;
END
$$;

CREATE FUNCTION payments.job_kind_list() RETURNS TABLE (kind text, given_up text)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT k.kind, k.given_up::text FROM payments.job_kind AS k;
END
$$;

-- --- what the leader calls -----------------------------------------------------------------

-- River's QueueCreateOrSetUpdatedAt for our queue: a pause set meanwhile is
-- kept. Returns whether the queue is paused.
CREATE FUNCTION payments.queue_touch() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_paused boolean;
BEGIN
    INSERT INTO metadata.river_queue AS q (name, updated_at)
    VALUES (payments.config_queue(), now())
    ON CONFLICT (name) DO UPDATE SET updated_at = EXCLUDED.updated_at
    RETURNING q.paused_at IS NOT NULL INTO v_paused;
    RETURN v_paused;
END
$$;

-- River's scheduler: due retryable and scheduled jobs of our queue become
-- available. The UPDATE fires no insert trigger, so the workers are
-- notified here, once.
CREATE FUNCTION payments.job_schedule_due(p_max integer) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue constant text := payments.config_queue();
    v_count integer;
BEGIN
    PERFORM payments.require(p_max BETWEEN 1 AND 10000, 'max must be between 1 and 10000');
    WITH due AS (
        SELECT j.id
        FROM metadata.river_job AS j
        WHERE j.state IN ('retryable', 'scheduled')
          AND j.queue = v_queue
          AND j.scheduled_at <= now()
        ORDER BY j.priority, j.scheduled_at, j.id
        LIMIT p_max
        FOR UPDATE SKIP LOCKED
    ),
    made_available AS (
        UPDATE metadata.river_job AS j SET state = 'available' FROM due WHERE j.id = due.id RETURNING 1
    )
    SELECT count(*) INTO v_count FROM made_available;
    IF v_count > 0 THEN
        PERFORM pg_notify('metadata.river_insert', jsonb_build_object('queue', v_queue)::text);
    END IF;
    RETURN v_count;
END
$$;

-- River's rescuer, with death detected directly: a running job of our queue
-- whose lease row is missing, or whose lease backend is gone, lost its worker.
-- The time bound catches the rest (alive but stuck, or behind a half-open
-- connection). As River's rescuer does, it becomes retryable after River's
-- backoff for len(errors) + 1 (the scheduler then makes it available), or is
-- discarded at max_attempts - and then its kind's given-up effect follows from
-- the trigger, as for any discard. A job that kills its process thus waits
-- 1, 16, 81 ... s between attempts instead of burning them all in seconds.
-- FOR UPDATE re-checks `running` on the latest row version, and SKIP LOCKED
-- passes over a job whose outcome is being written.
CREATE FUNCTION payments.job_rescue_orphaned(p_stuck_after_seconds float8, p_max integer, p_error text)
RETURNS TABLE (id bigint, state text, kind text, attempt smallint, retry_in_seconds float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_queue constant text := payments.config_queue();
BEGIN
    -- Below a minute the time bound would take jobs from workers still,
    -- legitimately, waiting on Stripe.
    PERFORM payments.require(p_stuck_after_seconds >= 60 AND p_stuck_after_seconds < 'infinity'::float8,
                             'stuck_after_seconds must be at least 60');
    PERFORM payments.require(p_max BETWEEN 1 AND 10000, 'max must be between 1 and 10000');
    PERFORM payments.require(char_length(p_error) BETWEEN 1 AND 1000, 'error must be 1 to 1000 characters');
    RETURN QUERY
    WITH orphaned AS (
        SELECT j.id,
               CASE WHEN j.attempt < j.max_attempts
                    THEN payments.retry_delay_seconds(coalesce(cardinality(j.errors), 0) + 1)
               END AS delay
        FROM metadata.river_job AS j
        WHERE j.state = 'running'
          AND j.queue = v_queue
          AND (j.attempted_at < now() - make_interval(secs => p_stuck_after_seconds)
               OR NOT EXISTS (
                   SELECT 1 FROM payments.job_lease AS l
                   WHERE l.job_id = j.id AND l.attempt = j.attempt
                     AND payments.backend_alive(l.backend_pid, l.backend_start)))
        ORDER BY j.id
        LIMIT p_max
        FOR UPDATE OF j SKIP LOCKED
    ),
    rescued AS (
        UPDATE metadata.river_job AS j
        SET state = CASE WHEN o.delay IS NULL
                         THEN 'discarded'::metadata.river_job_state
                         ELSE 'retryable'::metadata.river_job_state END,
            finalized_at = CASE WHEN o.delay IS NULL THEN now() END,
            scheduled_at = CASE WHEN o.delay IS NULL THEN j.scheduled_at
                                ELSE now() + make_interval(secs => o.delay) END,
            errors = array_append(j.errors, jsonb_build_object(
                'at', now(), 'attempt', j.attempt, 'error', p_error, 'trace', ''))
        FROM orphaned AS o
        WHERE j.id = o.id
        RETURNING j.id, j.state, j.kind, j.attempt, o.delay
    ),
    released AS (
        DELETE FROM payments.job_lease AS l USING rescued AS r WHERE l.job_id = r.id
    )
    SELECT r.id, r.state::text, r.kind, r.attempt, r.delay FROM rescued AS r;
END
$$;

-- The cleaner: finalized jobs of our queue only, oldest first, a batch at a
-- time, never younger than payments.config.min_job_retention.
CREATE FUNCTION payments.job_clean_finalized(
    p_completed_seconds float8, p_discarded_seconds float8, p_batch integer
) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_config payments.config;
    v_minimum float8;
    v_count integer;
BEGIN
    SELECT * INTO STRICT v_config FROM payments.config;
    v_minimum := extract(epoch FROM v_config.min_job_retention);
    PERFORM payments.require(
        p_completed_seconds >= v_minimum AND p_completed_seconds < 'infinity'::float8
        AND p_discarded_seconds >= v_minimum AND p_discarded_seconds < 'infinity'::float8,
        format('retentions must be at least payments.config.min_job_retention (%s s)', v_minimum));
    PERFORM payments.require(p_batch BETWEEN 1 AND 10000, 'batch must be between 1 and 10000');
    WITH doomed AS (
        SELECT j.id
        FROM metadata.river_job AS j
        WHERE j.queue = v_config.queue
          AND j.finalized_at IS NOT NULL
          AND ((j.state IN ('completed', 'cancelled')
                AND j.finalized_at < now() - make_interval(secs => p_completed_seconds))
               OR (j.state = 'discarded'
                   AND j.finalized_at < now() - make_interval(secs => p_discarded_seconds)))
        ORDER BY j.finalized_at
        LIMIT p_batch
        FOR UPDATE SKIP LOCKED
    ),
    deleted AS (
        DELETE FROM metadata.river_job AS j USING doomed WHERE j.id = doomed.id RETURNING j.id
    ),
    released AS (
        DELETE FROM payments.job_lease AS l USING deleted WHERE l.job_id = deleted.id
    )
    SELECT count(*) INTO v_count FROM deleted;
    RETURN v_count;
END
$$;

-- Maintenance leadership: taken when vacant, expired, or its holder's backend
-- is gone (so a dead leader is replaced at once); renewed when the caller's
-- backend already holds it. Called on the worker's dedicated leader connection.
CREATE FUNCTION payments.leader_elect(p_leader_id text, p_ttl_seconds float8) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_pid constant integer := pg_backend_pid();
    v_started constant timestamptz := payments.backend_start();
BEGIN
    PERFORM payments.require(char_length(p_leader_id) BETWEEN 1 AND 127,
                             'leader_id must be 1 to 127 characters');
    PERFORM payments.require(p_ttl_seconds BETWEEN 1 AND 600, 'ttl_seconds must be between 1 and 600');
    INSERT INTO payments.worker_leader AS l
        (singleton, leader_id, backend_pid, backend_start, elected_at, expires_at)
    VALUES (true, p_leader_id, v_pid, v_started, now(), now() + make_interval(secs => p_ttl_seconds))
    ON CONFLICT (singleton) DO UPDATE
    SET leader_id = EXCLUDED.leader_id,
        backend_pid = EXCLUDED.backend_pid,
        backend_start = EXCLUDED.backend_start,
        elected_at = CASE WHEN (l.backend_pid, l.backend_start) = (v_pid, v_started)
                          THEN l.elected_at ELSE now() END,
        expires_at = EXCLUDED.expires_at
    WHERE (l.backend_pid, l.backend_start) = (v_pid, v_started)
       OR l.expires_at <= now()
       OR NOT payments.backend_alive(l.backend_pid, l.backend_start);
    RETURN FOUND;
END
$$;

CREATE FUNCTION payments.leader_resign() RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    DELETE FROM payments.worker_leader AS l
    WHERE l.backend_pid = pg_backend_pid() AND l.backend_start = payments.backend_start();
    RETURN FOUND;
END
$$;

-- --- what the exporter reads ---------------------------------------------------------------

-- Finalized jobs are left out: their count grows without bound, and their
-- rates come from the workers' counters.
CREATE FUNCTION payments.job_unfinished_counts()
RETURNS TABLE (queue text, kind text, state text, jobs bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT j.queue, j.kind, j.state::text, count(*)
        FROM metadata.river_job AS j
        WHERE j.state IN ('available', 'running', 'retryable', 'scheduled', 'pending')
        GROUP BY j.queue, j.kind, j.state;
END
$$;

-- Our queue always has a value (0 when nothing waits), so an alert on it
-- never goes quiet for lack of a series.
CREATE FUNCTION payments.job_oldest_available_age() RETURNS TABLE (queue text, age_seconds float8)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT ages.queue, coalesce(max(ages.age_seconds), 0)::float8
        FROM (
            SELECT j.queue, extract(epoch FROM now() - min(j.scheduled_at)) AS age_seconds
            FROM metadata.river_job AS j
            WHERE j.state = 'available' AND j.scheduled_at <= now()
            GROUP BY j.queue
            UNION ALL
            SELECT c.queue, NULL FROM payments.config AS c
        ) AS ages
        GROUP BY ages.queue;
END
$$;

CREATE FUNCTION payments.payment_recent_counts() RETURNS TABLE (status text, payments bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT p.status, count(*)
        FROM payments.transactions AS p
        WHERE p.created_at > now() - interval '24 hours'
        GROUP BY p.status;
END
$$;

-- --- grants --------------------------------------------------------------------------------

-- A read-only monitoring group: grant it to the exporter's login when that
-- should not be a worker. Cluster-wide, like the other two.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'payment_monitor') THEN
        CREATE ROLE payment_monitor NOLOGIN;
    END IF;
END
$roles$;

DROP POLICY transactions_worker_update ON payments.transactions;
DROP POLICY transactions_worker_read ON payments.transactions;
REVOKE ALL ON payments.transactions, payments.config, payments.currency FROM payment_worker;
REVOKE ALL ON metadata.river_job FROM payment_worker;
REVOKE ALL ON SCHEMA metadata FROM payment_worker;
DROP FUNCTION payments.river_job_clean(text, timestamptz, timestamptz, integer);

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;
GRANT USAGE ON SCHEMA payments TO payment_monitor;

GRANT EXECUTE ON FUNCTION
    payments.worker_settings(),
    payments.job_claim(integer, text),
    payments.job_payment_get(bigint, integer, uuid),
    payments.job_complete(bigint, integer, uuid),
    payments.job_retry(bigint, integer, uuid, jsonb, float8),
    payments.job_discard(bigint, integer, uuid, jsonb),
    payments.job_kind_list(),
    payments.queue_touch(),
    payments.job_complete_with_intent(bigint, integer, uuid, text, text),
    payments.job_schedule_due(integer),
    payments.job_rescue_orphaned(float8, integer, text),
    payments.job_clean_finalized(float8, float8, integer),
    payments.leader_elect(text, float8),
    payments.leader_resign()
TO payment_worker;

GRANT EXECUTE ON FUNCTION
    payments.job_unfinished_counts(),
    payments.job_oldest_available_age(),
    payments.payment_recent_counts()
TO payment_worker, payment_monitor;

COMMIT;
