-- Deploy payment_worker:refund_client_columns
-- requires: client_cancel_unpaid
-- payment_client read whole rows of its refunds, among them requested_role and
-- requested_user_id: the login and JWT sub of the operator who refunded it. A
-- client needs the refund's own facts, not who asked. Its SELECT becomes one on
-- every other column; the row-level security policy (its own payments' refunds
-- only) stays. Operators still read everything.

BEGIN;

REVOKE SELECT ON payments.refunds FROM payment_client;
GRANT SELECT (id, payment_id, amount, currency, reason, status, provider_refund_id, failure_reason,
              source, provider_synced_at, created_at, updated_at)
    ON payments.refunds TO payment_client;

COMMIT;
