-- Revert payment_worker:payments_schema

BEGIN;

-- The jobs of the payments dropped here. Where River's tables outlive us
-- (river_schema's revert keeps what River has migrated), they would otherwise
-- wait in our queue forever, naming payments that no longer exist.
DELETE FROM metadata.river_job WHERE queue = (SELECT c.queue FROM payments.config AS c);
DROP TABLE payments.transactions, payments.config, payments.currency;
DROP FUNCTION payments.transactions_guard_update(), payments.transactions_enqueue();
DROP SCHEMA payments;

COMMIT;
