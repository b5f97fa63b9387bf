-- Verify payment_worker:payments_created_at_index

BEGIN;

SELECT 1 / count(*) FROM pg_indexes
WHERE schemaname = 'payments' AND indexname = 'transactions_created_at_idx';

ROLLBACK;
