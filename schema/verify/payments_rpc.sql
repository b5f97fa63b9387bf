-- Verify payment_worker:payments_rpc

BEGIN;

SELECT has_function_privilege('public.create_payment_intent_sync(numeric, text)', 'execute');
SELECT has_function_privilege('public.get_payment(uuid)', 'execute');
SELECT 1 / count(*) FROM pg_extension WHERE extname = 'dblink';

ROLLBACK;
