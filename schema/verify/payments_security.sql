-- Verify payment_worker:payments_security

BEGIN;

SELECT 1 / count(*) FROM pg_roles WHERE rolname IN ('payment_client', 'payment_worker') HAVING count(*) = 2;
SELECT 1 / (has_function_privilege('payment_client', 'public.create_payment_intent_sync(numeric, text)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('public', 'public.create_payment_intent_sync(numeric, text)', 'execute'))::int;
-- The worker's table grants are worker_api's to replace: check what both leave.
SELECT 1 / (has_schema_privilege('payment_worker', 'payments', 'usage'))::int;
SELECT 1 / relrowsecurity::int FROM pg_class WHERE oid = 'payments.transactions'::regclass;

ROLLBACK;
