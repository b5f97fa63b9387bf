-- Verify payment_worker:payment_lifecycle

BEGIN;

SELECT provider_status, last_payment_error_message, last_payment_error_code,
       last_payment_error_decline_code, amount_received, provider_synced_at
FROM payments.transactions WHERE false;
SELECT 1 / (SELECT count(*) FROM payments.job_kind
            WHERE kind IN ('apply_stripe_event', 'sync_payment'))::int / 2;
SELECT 1 / payments.status_transition_allowed('pending', 'processing')::int;
SELECT 1 / (NOT payments.status_transition_allowed('succeeded', 'processing'))::int;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.job_payment_observe(bigint, integer, uuid, timestamptz, jsonb)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_client', 'payments.resync(uuid)', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('public', 'payments.resync(uuid)', 'execute'))::int;
SELECT 1 / (NOT has_function_privilege('public', 'payments.observation_token()', 'execute'))::int;
SELECT 1 / has_function_privilege('payment_monitor', 'payments.stripe_event_unapplied()', 'execute')::int;

ROLLBACK;
