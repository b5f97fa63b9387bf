-- Verify payment_worker:operation_given_up_resync

BEGIN;

SELECT 1 / (pg_get_functiondef('payments.payment_operation_given_up(bigint, jsonb, text)'::regprocedure)
            LIKE '%payments.sync_enqueue(v_payment_id, 0)%')::int;
SELECT 1 / (NOT has_function_privilege('public',
    'payments.payment_operation_given_up(bigint, jsonb, text)', 'execute'))::int;

ROLLBACK;
