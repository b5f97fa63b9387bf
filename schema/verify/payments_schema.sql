-- Verify payment_worker:payments_schema

BEGIN;

SELECT id, user_id, amount, currency, status, error_message, provider, provider_payment_id,
       provider_client_secret, description, created_at, updated_at
FROM payments.transactions WHERE false;
SELECT 1 / count(*) FROM payments.config;
SELECT 1 / count(*) FROM payments.currency WHERE code = 'USD';

ROLLBACK;
