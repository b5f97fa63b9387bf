-- Deploy payment_worker:woken_wait
-- requires: payment_operations
-- The RPCs' wait sleeps on a lock instead of polling the row. A worker's lease
-- session takes a session advisory lock for each job it claims (keyed by the
-- job's request: its operation, refund or payment) and gives it up right after
-- the job's outcome has committed (durably). A waiting RPC polls only until the
-- lock is held - the job is claimed - then waits for it in bounded slices and
-- reads the row once it is free. If the worker dies its session ends, the lock
-- goes, the RPC reads the row (still unanswered) and waits again. Locks are not
-- MVCC: this works at every isolation level (the row itself is read through
-- payment_read_committed / request_read_committed as before).

BEGIN;

-- The advisory lock space of these waits: (WAIT_CLASS, key).
CREATE FUNCTION payments.wait_class() RETURNS integer
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN 1885434739;
END
$$;

-- 31 bits of the request's id; a collision only makes a waiter read once more.
CREATE FUNCTION payments.wait_key(p_id uuid) RETURNS integer
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN ('x' || left(p_id::text, 8))::bit(32)::integer & 2147483647;
END
$$;

-- The id a job's waiter waits under: its operation or refund, else its payment.
CREATE FUNCTION payments.job_wait_id(p_args jsonb) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce(payments.job_arg_uuid(p_args, 'operation_id'),
                    payments.job_arg_uuid(p_args, 'refund_id'),
                    payments.job_arg_uuid(p_args, 'payment_id'));
END
$$;

-- job_claim, each claimed job's wait lock taken on the claiming (lease) session;
-- wait_locked says whether it was (so only those are woken). A try: a lock held
-- elsewhere (a client holding the key, a stuck earlier attempt) never holds up
-- a claim; its waiter then reads in slices.
CREATE FUNCTION payments.job_claim_woken(p_max integer, p_attempted_by text)
RETURNS TABLE (
    id bigint, kind text, args jsonb, attempt smallint, max_attempts smallint,
    priority smallint, scheduled_at timestamptz, created_at timestamptz, lease_token uuid,
    error_count integer, wait_locked boolean
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_class constant integer := payments.wait_class();
    v_wait uuid;
BEGIN
    FOR id, kind, args, attempt, max_attempts, priority, scheduled_at, created_at, lease_token,
        error_count IN SELECT * FROM payments.job_claim(p_max, p_attempted_by) LOOP
        v_wait := payments.job_wait_id(args);
        wait_locked := v_wait IS NOT NULL
                       AND pg_try_advisory_lock(v_class, payments.wait_key(v_wait));
        RETURN NEXT;
    END LOOP;
END
$$;

-- Gives up the wait locks of these jobs, on the lease session, once their outcomes
-- have committed. A lock this session does not hold (its try failed) is skipped
-- without the server's warning.
CREATE FUNCTION payments.job_wake(p_ids bigint[]) RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp SET client_min_messages = error AS $$
DECLARE
    v_class constant integer := payments.wait_class();
    v_woken integer := 0;
    v_wait uuid;
BEGIN
    PERFORM payments.require(cardinality(p_ids) <= 1000, 'at most 1000 jobs');
    FOR v_wait IN
        SELECT payments.job_wait_id(j.args) FROM metadata.river_job AS j
        WHERE j.id = ANY(p_ids) AND j.queue = payments.config_queue()
    LOOP
        IF v_wait IS NOT NULL AND pg_advisory_unlock(v_class, payments.wait_key(v_wait)) THEN
            v_woken := v_woken + 1;
        END IF;
    END LOOP;
    RETURN v_woken;
END
$$;

-- Waits, at most one slice (lock_timeout), for the worker holding the key to
-- finish. False at once when no session holds it: the job is not claimed yet
-- (or its worker died), and the caller polls. A client holding the key itself
-- only turns the wait back into reads, one a slice.
CREATE FUNCTION payments.wait_for_worker(p_key integer) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp SET lock_timeout = '250ms' AS $$
DECLARE
    v_class constant integer := payments.wait_class();
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_locks AS l
        WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 2
          AND l.database = (SELECT d.oid FROM pg_database AS d WHERE d.datname = current_database())
          AND l.classid = v_class::oid AND l.objid = p_key::oid) THEN
        RETURN false;
    END IF;
    BEGIN
        PERFORM pg_advisory_lock_shared(v_class, p_key);
        PERFORM pg_advisory_unlock_shared(v_class, p_key);
    EXCEPTION WHEN lock_not_available THEN
        NULL;  -- a slice passed: the caller reads the row and comes back
    END;
    RETURN true;
END
$$;

-- As before (payments_rpc), but sleeping on the worker's lock once the job is
-- claimed; the 1 ms polling steps, backing off to 50 ms, only until then.
CREATE OR REPLACE FUNCTION payments.payment_await(p_id uuid, p_timeout interval) RETURNS payments.transactions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start constant timestamptz := clock_timestamp();
    v_key constant integer := payments.wait_key(p_id);
    v_row payments.transactions;
    v_sleep double precision := 0.001;
BEGIN
    LOOP
        v_row := payments.payment_read_committed(p_id);
        IF v_row.status IS DISTINCT FROM 'pending_intent' THEN
            RETURN v_row;
        END IF;
        IF clock_timestamp() - v_start >= p_timeout THEN
            RAISE EXCEPTION 'payment % has no PaymentIntent yet after %', p_id, p_timeout
                USING DETAIL = 'The payment is recorded and the workers will still create its PaymentIntent.',
                      HINT = format('Read it later with SELECT get_payment(%L); check that the workers are running.', p_id);
        END IF;
        IF NOT payments.wait_for_worker(v_key) THEN
            PERFORM pg_sleep(v_sleep);
            IF clock_timestamp() - v_start > interval '100 milliseconds' THEN
                v_sleep := least(v_sleep * 1.5, 0.05);
            END IF;
        END IF;
    END LOOP;
END
$$;

CREATE OR REPLACE FUNCTION payments.request_await(p_kind text, p_id uuid, p_what text, p_timeout interval) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start constant timestamptz := clock_timestamp();
    v_key constant integer := payments.wait_key(p_id);
    v_row jsonb;
    v_sleep double precision := 0.001;
BEGIN
    LOOP
        v_row := payments.request_read_committed(p_kind, p_id);
        IF v_row ->> 'status' NOT IN ('requested', 'pending_refund') THEN
            RETURN v_row;
        END IF;
        IF clock_timestamp() - v_start >= p_timeout THEN
            RAISE EXCEPTION '% of payment % (request %) is not answered after %', p_what, v_row ->> 'payment_id', p_id, p_timeout
                USING DETAIL = 'The request is recorded and the workers will still carry it out.',
                      HINT = format('Read its outcome later with SELECT get_payment(%L); check that the workers are running.',
                                    v_row ->> 'payment_id');
        END IF;
        IF NOT payments.wait_for_worker(v_key) THEN
            PERFORM pg_sleep(v_sleep);
            IF clock_timestamp() - v_start > interval '100 milliseconds' THEN
                v_sleep := least(v_sleep * 1.5, 0.05);
            END IF;
        END IF;
    END LOOP;
END
$$;

REVOKE ALL ON FUNCTION
    payments.wait_class(),
    payments.wait_key(uuid),
    payments.job_wait_id(jsonb),
    payments.job_claim_woken(integer, text),
    payments.job_wake(bigint[]),
    payments.wait_for_worker(integer)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    payments.job_claim_woken(integer, text),
    payments.job_wake(bigint[])
TO payment_worker;

COMMIT;
