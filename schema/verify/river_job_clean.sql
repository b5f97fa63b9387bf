-- Verify payment_worker:river_job_clean

BEGIN;

SELECT 1 / has_function_privilege(
    'payment_worker', 'payments.river_job_clean(text, timestamptz, timestamptz, integer)', 'execute'
)::int;

ROLLBACK;
