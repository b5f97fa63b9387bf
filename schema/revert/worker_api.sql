-- Revert payment_worker:worker_api
-- Restores exactly what payments_security and river_job_clean left: the
-- worker's table grants, its row-level security policies, river_job_clean.

BEGIN;

-- Our queue's row goes with us; River's producers make theirs again on start.
DELETE FROM metadata.river_queue WHERE name = (SELECT c.queue FROM payments.config AS c);
DROP TRIGGER river_job_deleted_unfinished ON metadata.river_job;
DROP TRIGGER river_job_given_up ON metadata.river_job;
DROP FUNCTION payments.job_given_up();
DROP TABLE payments.job_kind;
DROP FUNCTION payments.create_payment_intent_given_up(bigint, jsonb, text);
DROP FUNCTION payments.retry_delay_seconds(integer);
DROP FUNCTION payments.job_kind_list();
DROP FUNCTION payments.queue_touch();
DROP FUNCTION payments.worker_settings();
DROP FUNCTION payments.job_claim(integer, text);
DROP FUNCTION payments.job_payment_get(bigint, integer, uuid);
DROP FUNCTION payments.job_complete(bigint, integer, uuid);
DROP FUNCTION payments.job_retry(bigint, integer, uuid, jsonb, float8);
DROP FUNCTION payments.job_discard(bigint, integer, uuid, jsonb);
DROP FUNCTION payments.job_complete_with_intent(bigint, integer, uuid, text, text);
DROP FUNCTION payments.job_schedule_due(integer);
DROP FUNCTION payments.job_rescue_orphaned(float8, integer, text);
DROP FUNCTION payments.job_clean_finalized(float8, float8, integer);
DROP FUNCTION payments.leader_elect(text, float8);
DROP FUNCTION payments.leader_resign();
DROP FUNCTION payments.job_unfinished_counts();
DROP FUNCTION payments.job_oldest_available_age();
DROP FUNCTION payments.payment_recent_counts();
DROP FUNCTION payments.job_error_validate(jsonb);
DROP FUNCTION payments.job_release(bigint, integer, uuid);
DROP FUNCTION payments.job_held(bigint, integer, uuid);
DROP FUNCTION payments.job_payment_id(text, jsonb);
DROP FUNCTION payments.config_queue();
DROP FUNCTION payments.require(boolean, text);
DROP FUNCTION payments.backend_start();
DROP FUNCTION payments.backend_alive(integer, timestamptz);

DROP TABLE payments.worker_leader;
DROP TABLE payments.job_lease;
ALTER TABLE payments.config DROP COLUMN min_job_retention;

REVOKE ALL ON SCHEMA payments FROM payment_monitor;
DO $roles$
BEGIN
    DROP ROLE IF EXISTS payment_monitor;
EXCEPTION WHEN dependent_objects_still_exist THEN
    RAISE NOTICE 'role payment_monitor kept: %', SQLERRM;
END
$roles$;

-- As payments_security granted them.
GRANT USAGE ON SCHEMA metadata TO payment_worker;
GRANT SELECT, UPDATE ON metadata.river_job TO payment_worker;
GRANT SELECT ON payments.config, payments.currency TO payment_worker;
GRANT SELECT, UPDATE (status, error_message, provider_payment_id, provider_client_secret)
    ON payments.transactions TO payment_worker;

CREATE POLICY transactions_worker_read ON payments.transactions
    FOR SELECT TO payment_worker USING (true);

CREATE POLICY transactions_worker_update ON payments.transactions
    FOR UPDATE TO payment_worker USING (true) WITH CHECK (true);

-- As river_job_clean made it.
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
