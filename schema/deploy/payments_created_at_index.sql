-- Deploy payment_worker:payments_created_at_index
-- requires: payments_schema
-- The metrics exporter counts the last 24 hours' payments at every scrape:
-- an index keeps that a range scan however old the table grows.

BEGIN;

CREATE INDEX transactions_created_at_idx ON payments.transactions (created_at);

COMMIT;
