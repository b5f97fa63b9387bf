-- Verify payment_worker:refund_taken_back_as_stripes

BEGIN;

SELECT 1 / (NOT payments.refund_transition_allowed('failed', 'pending_refund', true))::int;
SELECT 1 / payments.refund_transition_allowed('failed', 'succeeded', true)::int;
SELECT 1 / (NOT payments.refund_transition_allowed('failed', 'succeeded', false))::int;

ROLLBACK;
