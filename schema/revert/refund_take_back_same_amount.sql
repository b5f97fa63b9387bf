-- Revert payment_worker:refund_take_back_same_amount
-- A refund is taken back by its metadata.refund_id whatever its amount again
-- (payment_operations' definition).

BEGIN;

CREATE OR REPLACE FUNCTION payments.refund_observe(p_payment payments.transactions, p_token timestamptz, p_refund jsonb)
RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_id constant text := p_refund ->> 'id';
    v_status constant text := p_refund ->> 'status';
    v_ours constant uuid := payments.job_arg_uuid(p_refund, 'metadata_refund_id');
    v_row payments.refunds;
BEGIN
    IF jsonb_typeof(p_refund) IS DISTINCT FROM 'object' OR char_length(v_id) NOT BETWEEN 1 AND 255
       OR v_status NOT IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled')
       OR jsonb_typeof(p_refund -> 'amount') IS DISTINCT FROM 'number'
       OR upper(p_refund ->> 'currency') IS DISTINCT FROM p_payment.currency THEN
        RETURN 'ignored';
    END IF;
    SELECT * INTO v_row FROM payments.refunds AS r WHERE r.provider_refund_id = v_id FOR UPDATE;
    IF v_row.id IS NULL AND v_ours IS NOT NULL THEN
        SELECT * INTO v_row FROM payments.refunds AS r
        WHERE r.id = v_ours AND r.payment_id = p_payment.id AND r.provider_refund_id IS NULL
        FOR UPDATE;
    END IF;
    IF v_row.id IS NULL THEN
        INSERT INTO payments.refunds
            (id, payment_id, amount, currency, reason, status, provider_refund_id, failure_reason,
             source, provider_synced_at)
        VALUES (gen_random_uuid(), p_payment.id, (p_refund ->> 'amount')::bigint, p_payment.currency,
                left(p_refund ->> 'reason', 255), v_status, v_id, left(p_refund ->> 'failure_reason', 5000),
                'stripe', p_token);
        RETURN 'written';
    END IF;
    IF v_row.payment_id <> p_payment.id THEN
        RETURN 'ignored';
    END IF;
    IF p_token <= v_row.provider_synced_at THEN
        RETURN 'stale';
    END IF;
    IF NOT payments.refund_transition_allowed(v_row.status, v_status, v_row.provider_refund_id IS NULL) THEN
        RETURN 'refused';
    END IF;
    UPDATE payments.refunds AS r
    SET status = v_status,
        provider_refund_id = v_id,
        failure_reason = CASE WHEN v_status IN ('failed', 'canceled')
                              THEN coalesce(left(p_refund ->> 'failure_reason', 5000), r.failure_reason)
                              ELSE NULL END,
        provider_synced_at = p_token
    WHERE r.id = v_row.id;
    RETURN 'written';
END
$$;

COMMIT;
