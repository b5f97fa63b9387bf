-- Revert payment_worker:river_job_clean

BEGIN;

DROP FUNCTION payments.river_job_clean(text, timestamptz, timestamptz, integer);

COMMIT;
