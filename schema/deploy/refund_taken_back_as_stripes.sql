-- Deploy payment_worker:refund_taken_back_as_stripes
-- requires: refund_client_columns
-- A refund given up before Stripe confirmed it (failed, no id yet) is taken
-- back when Stripe turns out to hold it: its id is set and its status becomes
-- Stripe's. The guard let it move to any status then, pending_refund too,
-- which means "Stripe does not have it yet" while setting Stripe's id; no
-- observation makes that move (Stripe has no such status). Now refused.

BEGIN;

CREATE OR REPLACE FUNCTION payments.refund_transition_allowed(p_from text, p_to text, p_adopting boolean)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN p_from = p_to OR (p_adopting AND p_from = 'failed' AND p_to <> 'pending_refund') OR CASE p_from
        WHEN 'pending_refund' THEN p_to IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled')
        WHEN 'pending' THEN p_to IN ('requires_action', 'succeeded', 'failed', 'canceled')
        WHEN 'requires_action' THEN p_to IN ('pending', 'succeeded', 'failed', 'canceled')
        WHEN 'succeeded' THEN p_to = 'failed'
        ELSE false
    END;
END
$$;

COMMIT;
