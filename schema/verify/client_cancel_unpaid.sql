-- Verify payment_worker:client_cancel_unpaid

BEGIN;

SELECT requested_by_operator FROM payments.payment_operations WHERE false;
SELECT 1 / ('check_first' = ANY (proargnames))::int FROM pg_proc
WHERE oid = 'payments.job_operation_get(bigint, integer, uuid)'::regprocedure;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_operation_check(bigint, integer, uuid, timestamptz, jsonb)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_operation_get(bigint, integer, uuid)', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('payment_client',
    'payments.job_operation_check(bigint, integer, uuid, timestamptz, jsonb)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('payment_worker',
    'payments.operation_refusal(payments.payment_operations, text)', 'execute'))::int;

ROLLBACK;
