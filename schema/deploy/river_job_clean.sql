-- Deploy payment_worker:river_job_clean
-- requires: payments_security
-- The cleaner's one privilege: deleting finalized jobs of one queue, oldest
-- first, a batch at a time. The worker role may not DELETE from river_job,
-- so a bug or a stolen login cannot erase jobs still in play.

BEGIN;

CREATE FUNCTION payments.river_job_clean(
    p_queue text,
    p_completed_before timestamptz,
    p_discarded_before timestamptz,
    p_batch integer
) RETURNS integer
LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH doomed AS (
        SELECT id
        FROM metadata.river_job
        WHERE queue = p_queue
          AND finalized_at IS NOT NULL
          AND ((state IN ('completed', 'cancelled') AND finalized_at < p_completed_before)
               OR (state = 'discarded' AND finalized_at < p_discarded_before))
        ORDER BY finalized_at
        LIMIT greatest(p_batch, 1)
        FOR UPDATE SKIP LOCKED
    ),
    deleted AS (
        DELETE FROM metadata.river_job AS j USING doomed WHERE j.id = doomed.id RETURNING 1
    )
    SELECT count(*)::integer FROM deleted
$$;

REVOKE ALL ON FUNCTION payments.river_job_clean(text, timestamptz, timestamptz, integer) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payments.river_job_clean(text, timestamptz, timestamptz, integer)
    TO payment_worker;

COMMIT;
