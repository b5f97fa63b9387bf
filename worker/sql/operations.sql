-- Capture, cancel and refunds (schema/deploy/payment_operations.sql): what a
-- capture_payment, cancel_payment or create_refund job is about, and its answer
-- written with the job's completion, each fenced by the job's lease.

-- name: job_operation_get
SELECT operation_id, operation, amount, reason, operation_status, payment_id, payment_status,
       payment_amount, currency, description, capture_method, provider_payment_id,
       payment_created_at, check_first
FROM payments.job_operation_get(%(id)s, %(attempt)s, %(lease)s)

-- name: job_operation_check
-- Writes the intent as Stripe has it now on the payment (under its lock) and says
-- whether the request may go to Stripe; if not, fails it and completes the job.
SELECT completed, operation_status, reason, old_status, new_status
FROM payments.job_operation_check(%(id)s, %(attempt)s, %(lease)s, %(token)s, %(intent)s::jsonb)

-- name: job_operation_finish
-- Writes the intent Stripe answered with on the payment (under its lock), decides
-- the operation and completes the job; 'mismatch' keeps the job: the payment
-- holds another intent than this one.
SELECT completed, operation_status, reason, old_status, new_status
FROM payments.job_operation_finish(%(id)s, %(attempt)s, %(lease)s, %(token)s, %(intent)s::jsonb)

-- name: job_refund_get
SELECT refund_id, amount, currency, reason, refund_status, provider_refund_id, payment_id,
       provider_payment_id, refund_created_at
FROM payments.job_refund_get(%(id)s, %(attempt)s, %(lease)s)

-- name: job_refund_finish
-- Stores the Stripe refund on our row (its status if the token is newer than
-- the row's) and completes the job.
SELECT completed, result, refund_status
FROM payments.job_refund_finish(%(id)s, %(attempt)s, %(lease)s, %(token)s, %(refund)s::jsonb)
