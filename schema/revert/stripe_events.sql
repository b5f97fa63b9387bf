-- Revert payment_worker:stripe_events

BEGIN;

DELETE FROM metadata.river_job
WHERE kind = 'apply_stripe_event' AND queue = (SELECT c.queue FROM payments.config AS c);
DROP FUNCTION payments.stripe_event_record(jsonb, text);
DROP FUNCTION payments.stripe_event_payment_id(jsonb);
DROP TABLE payments.stripe_events;
DROP INDEX payments.transactions_provider_payment_id_idx;
REVOKE ALL ON SCHEMA payments FROM payment_webhook;
-- The role is cluster-wide and may serve another database: left in place.

COMMIT;
