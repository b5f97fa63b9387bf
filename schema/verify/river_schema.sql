-- Verify payment_worker:river_schema

BEGIN;

SELECT id, state, attempt, max_attempts, attempted_at, created_at, finalized_at,
       scheduled_at, priority, args, attempted_by, errors, kind, metadata, queue, tags,
       unique_key, unique_states
FROM metadata.river_job WHERE false;
SELECT elected_at, expires_at, leader_id, name FROM metadata.river_leader WHERE false;
SELECT name, created_at, metadata, paused_at, updated_at FROM metadata.river_queue WHERE false;
SELECT 1 / count(*) FROM metadata.river_migration WHERE line = 'main' AND version = 6;

ROLLBACK;
