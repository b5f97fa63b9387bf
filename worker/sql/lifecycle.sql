-- A payment after its PaymentIntent (schema/deploy/payment_lifecycle.sql):
-- apply_stripe_event and sync_payment jobs read Stripe's current state and
-- write it only when their observation is newer than the stored one.

-- name: observation_token
-- The database's clock, taken before the PaymentIntent is retrieved: the
-- write compares it with the stored provider_synced_at, so no host clock counts.
SELECT payments.observation_token() AS token

-- name: job_lifecycle_get
SELECT payment_id, status, provider_payment_id, event_id, event_type, event_outcome,
       event_intent_id
FROM payments.job_lifecycle_get(%(id)s, %(attempt)s, %(lease)s)

-- name: job_payment_observe
-- Writes the observation if newer and a move Stripe makes, marks the job's
-- event and completes the job, in one transaction under the payment's lock.
SELECT completed, result, reason, old_status, new_status, event_age_seconds
FROM payments.job_payment_observe(%(id)s, %(attempt)s, %(lease)s, %(token)s, %(intent)s::jsonb)

-- name: job_lifecycle_ignore
SELECT payments.job_lifecycle_ignore(%(id)s, %(attempt)s, %(lease)s, %(reason)s) AS ours

-- name: payment_reconcile_enqueue
SELECT payments.payment_reconcile_enqueue(%(after_seconds)s, %(max)s, %(rate)s) AS queued

-- name: stripe_event_newest_created
SELECT payments.stripe_event_newest_created() AS created

-- name: stripe_event_record
-- As the webhook receiver records one; a duplicate changes nothing.
SELECT payments.stripe_event_record(%(event)s::jsonb, %(source)s) AS recorded
