-- Verify payment_worker:backfill_cursor

BEGIN;

SELECT queue, covered_at, resume_created_gte, resume_starting_after, resume_started_at,
       updated_at, updated_by
FROM payments.backfill_cursor WHERE false;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.backfill_pass_complete(timestamptz)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker',
    'payments.backfill_pass_cut(bigint, text, timestamptz)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker', 'payments.backfill_position()', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('payment_worker',
    'payments.backfill_require_leader()', 'execute'))::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'payments.backfill_cursor', 'SELECT'))::int;

ROLLBACK;
