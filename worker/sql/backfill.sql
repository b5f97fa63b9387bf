-- The backfill's position in Stripe's event list (schema/deploy/backfill_cursor.sql),
-- kept in the database so that a new leader carries on where the last one stopped.

-- name: backfill_position
-- No row until a pass has been saved.
SELECT covered_at, resume_created_gte, resume_starting_after, resume_started_at
FROM payments.backfill_position()

-- name: backfill_pass_complete
-- On the leader connection: the function refuses any session but the leader's.
SELECT payments.backfill_pass_complete(%(started_at)s) AS moved

-- name: backfill_pass_cut
-- On the leader connection, like backfill_pass_complete.
SELECT payments.backfill_pass_cut(%(created_gte)s, %(starting_after)s, %(started_at)s) AS saved
