-- Revert payment_worker:refund_taken_back_as_stripes
-- As payment_operations made it.

BEGIN;

CREATE OR REPLACE FUNCTION payments.refund_transition_allowed(p_from text, p_to text, p_adopting boolean)
RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN p_from = p_to OR (p_adopting AND p_from = 'failed') OR CASE p_from
        WHEN 'pending_refund' THEN p_to IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled')
        WHEN 'pending' THEN p_to IN ('requires_action', 'succeeded', 'failed', 'canceled')
        WHEN 'requires_action' THEN p_to IN ('pending', 'succeeded', 'failed', 'canceled')
        WHEN 'succeeded' THEN p_to = 'failed'
        ELSE false
    END;
END
$$;

COMMIT;
