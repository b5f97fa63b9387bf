-- Revert payment_worker:payments_created_at_index

BEGIN;

DROP INDEX payments.transactions_created_at_idx;

COMMIT;
