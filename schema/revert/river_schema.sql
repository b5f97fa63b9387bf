-- Revert payment_worker:river_schema
-- Drops River's tables only while they are still the ones this change made:
-- created by us (the deploy's marker) and never migrated by River since.
-- Ownership is read from River's own record, metadata.river_migration: once
-- River's migrator has run a version above our 6 or a line of its own, the
-- tables, and the history in them, are River's and stay (whatever River's
-- migrations dropped - river_client after 007 - is then simply not there).
-- A River that was there before us never had the marker, and keeps its tables.

BEGIN;

DO $river$
BEGIN
    IF to_regclass('metadata.river_job') IS NULL
       OR obj_description('metadata.river_job'::regclass, 'pg_class')
          IS DISTINCT FROM 'created by payment-worker (sqitch change river_schema)' THEN
        RETURN;
    END IF;
    IF to_regclass('metadata.river_migration') IS NULL OR EXISTS (
        SELECT 1 FROM metadata.river_migration AS m WHERE m.line <> 'main' OR m.version > 6
    ) THEN
        RAISE NOTICE 'River''s tables in schema metadata are kept: River has migrated them since';
        RETURN;
    END IF;
    DROP TABLE IF EXISTS metadata.river_client_queue, metadata.river_client;
    DROP TABLE metadata.river_queue, metadata.river_leader, metadata.river_job,
        metadata.river_migration;
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
