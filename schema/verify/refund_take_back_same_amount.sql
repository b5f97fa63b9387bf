-- Verify payment_worker:refund_take_back_same_amount

BEGIN;

SELECT 1 / (pg_get_functiondef(
    'payments.refund_observe(payments.transactions, timestamptz, jsonb)'::regprocedure)
    LIKE '%r.amount = (p_refund ->> ''amount'')::bigint%')::int;

ROLLBACK;
