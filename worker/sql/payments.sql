-- The payments a worker may see and answer: only the payment of a job it
-- holds, never a client secret once stored (schema/deploy/worker_api.sql).

-- name: config_get
SELECT currency, queue FROM payments.worker_settings()

-- name: job_payment_get
SELECT id, amount, currency, description, status, provider_payment_id, capture_method,
       created_at
FROM payments.job_payment_get(%(id)s, %(attempt)s, %(lease)s)

-- name: job_complete_with_intent
-- Stores the intent on the job's payment if it is still pending_intent and
-- completes the job, in one transaction.
SELECT completed, latency_seconds
FROM payments.job_complete_with_intent(
    %(id)s, %(attempt)s, %(lease)s, %(provider_payment_id)s, %(client_secret)s)
