-- Verify payment_worker:river_job_clean

BEGIN;

-- worker_api replaces it with payments.job_clean_finalized: either will do.
SELECT 1 / coalesce(has_function_privilege('payment_worker', coalesce(
    to_regprocedure('payments.river_job_clean(text, timestamptz, timestamptz, integer)'),
    to_regprocedure('payments.job_clean_finalized(float8, float8, integer)')), 'execute'), false)::int;

ROLLBACK;
