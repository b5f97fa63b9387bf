-- Revert payment_worker:payments_schema

BEGIN;

DROP TABLE payments.transactions, payments.config, payments.currency;
DROP FUNCTION payments.transactions_guard_update(), payments.transactions_enqueue();
DROP SCHEMA payments;

COMMIT;
