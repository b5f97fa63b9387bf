-- The receiver's queries. It logs in as a member of payment_webhook, which may run
-- payments.stripe_event_record and nothing else (schema/deploy/stripe_events.sql).

-- name: record_event
-- One statement on an autocommit connection: it has committed, event and job alike, by
-- the time it returns 'stored', 'duplicate' or 'ignored'.
SELECT payments.stripe_event_record(%(event)s::jsonb, 'webhook')

-- name: ping
SELECT 1
