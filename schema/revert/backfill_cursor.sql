-- Revert payment_worker:backfill_cursor
-- Drops what the deploy made; the backfill then starts each leader's first pass
-- from the newest event held again.

BEGIN;

DROP FUNCTION payments.backfill_pass_cut(bigint, text, timestamptz);
DROP FUNCTION payments.backfill_pass_complete(timestamptz);
DROP FUNCTION payments.backfill_position();
DROP FUNCTION payments.backfill_require_leader();
DROP TABLE payments.backfill_cursor;

COMMIT;
