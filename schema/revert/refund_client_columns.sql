-- Revert payment_worker:refund_client_columns
-- Back to what payment_operations granted: the client's SELECT on whole rows
-- of its own refunds.

BEGIN;

REVOKE SELECT (id, payment_id, amount, currency, reason, status, provider_refund_id, failure_reason,
               source, provider_synced_at, created_at, updated_at)
    ON payments.refunds FROM payment_client;
GRANT SELECT ON payments.refunds TO payment_client;

COMMIT;
