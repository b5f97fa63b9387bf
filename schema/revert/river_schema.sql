-- Revert payment_worker:river_schema
-- Drops River's tables only if this project created them: a River that was
-- there before us keeps its tables and jobs.

BEGIN;

DO $river$
BEGIN
    IF obj_description('metadata.river_job'::regclass, 'pg_class')
       IS DISTINCT FROM 'created by payment-worker (sqitch change river_schema)' THEN
        RETURN;
    END IF;
    DROP TABLE metadata.river_client_queue, metadata.river_client, metadata.river_queue,
        metadata.river_leader, metadata.river_job, metadata.river_migration;
    DROP FUNCTION metadata.river_job_state_in_bitmask(bit, metadata.river_job_state);
    DROP TYPE metadata.river_job_state;
    IF NOT EXISTS (
        SELECT 1 FROM pg_class WHERE relnamespace = 'metadata'::regnamespace
        UNION ALL
        SELECT 1 FROM pg_proc WHERE pronamespace = 'metadata'::regnamespace
        UNION ALL
        SELECT 1 FROM pg_type WHERE typnamespace = 'metadata'::regnamespace
    ) THEN
        DROP SCHEMA metadata;
    END IF;
END
$river$;

COMMIT;
