-- Deploy payment_worker:operation_given_up_resync
-- requires: payment_operations
-- A capture or cancel Stripe refuses may be refused because Stripe has moved
-- the intent on: an authorisation it let expire is canceled, one captured in
-- the dashboard succeeded. The job reads the intent after a refusal, but its
-- failure writes nothing on the payment, which stayed requires_capture until
-- an event or the reconciler came. Giving the request up now also queues a
-- sync_payment for its payment while that is open and has an intent: the
-- lifecycle's own re-read, written only if newer than what the row holds,
-- at once. The request still fails with Stripe's words, the job stays
-- discarded: only the payment is brought up to date.

BEGIN;

CREATE OR REPLACE FUNCTION payments.payment_operation_given_up(
    p_job_id bigint, p_args jsonb, p_caller_message text
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payment_id uuid;
BEGIN
    UPDATE payments.payment_operations AS o
    SET status = 'failed', finished_at = now(),
        error_message = coalesce(
            left(nullif(p_caller_message, ''), 5000),
            format('the %s could not be carried out (request %s); the operator has the details',
                   o.operation, o.id))
    WHERE o.id = payments.job_arg_uuid(p_args, 'operation_id') AND o.status = 'requested'
    RETURNING o.payment_id INTO v_payment_id;
    -- Under the payment's row lock, as sync_enqueue wants (one waiting sync per
    -- payment); the job's row is locked already, the order every outcome takes.
    PERFORM 1 FROM payments.transactions AS p
    WHERE p.id = v_payment_id AND p.provider_payment_id IS NOT NULL
      AND p.status NOT IN ('succeeded', 'canceled', 'failed')
    FOR UPDATE;
    IF FOUND THEN
        PERFORM payments.sync_enqueue(v_payment_id, 0);
    END IF;
END
$$;

COMMIT;
