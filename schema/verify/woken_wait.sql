-- Verify payment_worker:woken_wait

BEGIN;

SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_claim_woken(integer, text)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker', 'payments.job_wake(bigint[])', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('payment_worker',
    'payments.wait_for_worker(integer)', 'execute'))::int;
SELECT 1 / (payments.wait_key('ffffffff-0000-0000-0000-000000000000') = 2147483647)::int;

ROLLBACK;
