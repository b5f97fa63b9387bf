-- Verify payment_worker:payment_operations

BEGIN;

SELECT capture_method, capture_before, amount_capturable, cancellation_reason
FROM payments.transactions WHERE false;
SELECT id, payment_id, operation, amount, reason, status, error_message, requested_role,
       requested_user_id, created_at, finished_at
FROM payments.payment_operations WHERE false;
SELECT id, payment_id, amount, currency, reason, status, provider_refund_id, failure_reason, source,
       requested_role, requested_user_id, provider_synced_at, created_at, updated_at
FROM payments.refunds WHERE false;
SELECT 1 / count(*)::int FROM payments.job_kind
WHERE kind IN ('capture_payment', 'cancel_payment', 'create_refund') HAVING count(*) = 3;

SELECT 1 / has_function_privilege('payment_operator', 'public.capture_payment(uuid, numeric)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_operator', 'public.refund_payment(uuid, numeric, text)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_operator', 'public.cancel_payment(uuid, text)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_client', 'public.cancel_payment(uuid, text)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_client',
    'public.create_payment_intent_sync(numeric, text, text)', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('payment_client', 'public.capture_payment(uuid, numeric)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('payment_client', 'public.refund_payment(uuid, numeric, text)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('payment_worker', 'public.refund_payment(uuid, numeric, text)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('public', 'public.cancel_payment(uuid, text)', 'execute'))::int;
SELECT 1 / (NOT has_column_privilege('payment_operator', 'payments.transactions', 'provider_client_secret', 'SELECT'))::int;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_operation_finish(bigint, integer, uuid, timestamptz, jsonb)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_refund_finish(bigint, integer, uuid, timestamptz, jsonb)', 'execute')::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'payments.refunds', 'SELECT'))::int;

ROLLBACK;
