-- Revert payment_worker:river_insert_notify

BEGIN;

DROP TRIGGER river_job_notify_insert ON metadata.river_job;
DROP FUNCTION metadata.river_job_notify_insert();

COMMIT;
