-- Verify payment_worker:refund_client_columns

BEGIN;

SELECT 1 / (NOT has_column_privilege('payment_client', 'payments.refunds', 'requested_role', 'SELECT'))::int;
SELECT 1 / (NOT has_column_privilege('payment_client', 'payments.refunds', 'requested_user_id', 'SELECT'))::int;
SELECT 1 / has_column_privilege('payment_client', 'payments.refunds', 'amount', 'SELECT')::int;
SELECT 1 / has_column_privilege('payment_operator', 'payments.refunds', 'requested_user_id', 'SELECT')::int;
-- Every column but those two: one added later is the client's only when granted.
SELECT 1 / (count(*) = 12)::int FROM pg_attribute AS a
WHERE a.attrelid = 'payments.refunds'::regclass AND a.attnum > 0 AND NOT a.attisdropped
  AND has_column_privilege('payment_client', a.attrelid, a.attnum, 'SELECT');

ROLLBACK;
