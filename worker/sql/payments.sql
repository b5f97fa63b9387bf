-- Queries on payments. The worker never inserts payments; it only moves
-- them out of `pending_intent`, and only from there: a payment that was
-- cancelled, or already given its intent, is left as it is.

-- name: config_get
SELECT currency, queue FROM payments.config

-- name: payment_get
SELECT id, amount, currency, description, status, provider_payment_id
FROM payments.transactions
WHERE id = %(id)s

-- name: payment_set_intent
UPDATE payments.transactions
SET status = 'pending',
    provider_payment_id = %(provider_payment_id)s,
    provider_client_secret = %(client_secret)s
WHERE id = %(id)s AND status = 'pending_intent'
RETURNING extract(epoch FROM clock_timestamp() - created_at)::float8 AS latency_seconds

-- name: payment_set_failed
UPDATE payments.transactions
SET status = 'failed', error_message = %(error_message)s
WHERE id = %(id)s AND status = 'pending_intent'
