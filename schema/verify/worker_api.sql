-- Verify payment_worker:worker_api

BEGIN;

SELECT 1 / has_function_privilege('payment_worker', 'payments.job_claim(integer, text)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_worker', 'payments.leader_elect(text, float8)', 'execute')::int;
SELECT 1 / has_function_privilege('payment_monitor', 'payments.job_unfinished_counts()', 'execute')::int;
SELECT 1 / (NOT has_function_privilege('public', 'payments.job_claim(integer, text)', 'execute'))::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'metadata.river_job', 'select'))::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'payments.transactions', 'select'))::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'payments.config', 'select'))::int;
SELECT job_id, attempt, token, backend_pid, backend_start FROM payments.job_lease WHERE false;
SELECT leader_id, backend_pid, backend_start, elected_at, expires_at FROM payments.worker_leader WHERE false;
SELECT min_job_retention FROM payments.config WHERE false;
SELECT 1 / has_function_privilege('payment_worker', 'payments.queue_touch()', 'execute')::int;
SELECT 1 / count(*) FROM pg_trigger
WHERE tgrelid = 'metadata.river_job'::regclass AND tgname = 'river_job_given_up';
SELECT 1 / count(*) FROM payments.job_kind
WHERE kind = 'create_payment_intent' AND given_up = 'payments.create_payment_intent_given_up'::regproc;

ROLLBACK;
