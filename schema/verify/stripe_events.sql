-- Verify payment_worker:stripe_events

BEGIN;

SELECT id, type, created, api_version, livemode, payload, payment_id, source, outcome,
       received_at, processed_at, error
FROM payments.stripe_events WHERE false;
SELECT 1 / has_function_privilege('payment_webhook', 'payments.stripe_event_record(jsonb, text)', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('public', 'payments.stripe_event_record(jsonb, text)', 'execute'))::int;
SELECT 1 / (NOT has_table_privilege('payment_webhook', 'payments.stripe_events', 'select'))::int;

ROLLBACK;
