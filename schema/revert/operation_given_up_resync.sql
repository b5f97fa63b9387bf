-- Revert payment_worker:operation_given_up_resync
-- A request given up fails its request only again (payment_operations'
-- definition); its payment waits for an event or the reconciler.

BEGIN;

CREATE OR REPLACE FUNCTION payments.payment_operation_given_up(
    p_job_id bigint, p_args jsonb, p_caller_message text
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE payments.payment_operations AS o
    SET status = 'failed', finished_at = now(),
        error_message = coalesce(
            left(nullif(p_caller_message, ''), 5000),
            format('the %s could not be carried out (request %s); the operator has the details',
                   o.operation, o.id))
    WHERE o.id = payments.job_arg_uuid(p_args, 'operation_id') AND o.status = 'requested';
END
$$;

COMMIT;
