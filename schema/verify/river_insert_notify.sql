-- Verify payment_worker:river_insert_notify

BEGIN;

SELECT 1 / count(*) FROM pg_trigger
WHERE tgrelid = 'metadata.river_job'::regclass AND tgname = 'river_job_notify_insert';

ROLLBACK;
