-- Deploy payment_worker:client_cancel_unpaid
-- requires: woken_wait
-- A client may cancel its own payment only while it is unpaid (pending_intent,
-- pending). The RPC checks that when it records the request, under the
-- payment's lock; but the customer may pay before the cancel job runs, and
-- Stripe cancels a requires_capture intent too, releasing the authorisation:
-- a client's cancel would then do what only an operator may. So the request
-- now records whether an operator asked, and before a cancel that no operator
-- asked reaches Stripe, the job retrieves the intent and shows it to the
-- database (job_operation_check): the observation is written as any other,
-- and if the payment is paid (requires_capture or beyond) the request fails
-- and the job completes, in one transaction, without a call to cancel.
-- What is left is the round trip between that retrieve and the cancel: Stripe
-- has no conditional cancel.

BEGIN;

-- Whether the caller acted as payment_operator when the request was recorded.
-- NULL: recorded before this change, who asked is not known; such a cancel is
-- held to the client's rule (an operator asks again).
ALTER TABLE payments.payment_operations ADD COLUMN requested_by_operator boolean;

CREATE OR REPLACE FUNCTION payments.payment_operations_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.payment_id, NEW.operation, NEW.amount, NEW.reason, NEW.requested_role,
        NEW.requested_user_id, NEW.requested_by_operator, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.payment_id, OLD.operation, OLD.amount, OLD.reason, OLD.requested_role,
        OLD.requested_user_id, OLD.requested_by_operator, OLD.created_at) THEN
        RAISE EXCEPTION 'operation %: only its status and error can change', OLD.id;
    END IF;
    IF NEW.status <> OLD.status AND OLD.status <> 'requested' THEN
        RAISE EXCEPTION 'operation %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING DETAIL = format('%s is final.', OLD.status);
    END IF;
    RETURN NEW;
END
$$;


-- The loopback records who asked: an operator or not.
CREATE OR REPLACE FUNCTION payments.writer_request(p_message text, p_ticket text) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    m jsonb;
    v_payment payments.transactions;
    v_id uuid;
    v_amount bigint;
    v_left bigint;
    v_other payments.payment_operations;
BEGIN
    PERFORM payments.loopback_ticket_check(p_message, p_ticket);
    m := p_message::jsonb;
    v_id := (m ->> 1)::uuid;
    CASE m ->> 0
    WHEN 'read_operation' THEN
        RETURN (SELECT to_jsonb(o) FROM payments.payment_operations AS o WHERE o.id = v_id);
    WHEN 'read_refund' THEN
        RETURN (SELECT to_jsonb(r) FROM payments.refunds AS r WHERE r.id = v_id);
    WHEN 'payment' THEN
        INSERT INTO payments.transactions (id, owner_role, user_id, amount, currency, description, capture_method)
        VALUES (v_id, m ->> 2, m ->> 3, (m ->> 4)::bigint, m ->> 5, m ->> 6, m ->> 7)
        ON CONFLICT (id) DO NOTHING;
        RETURN jsonb_build_object('payment_id', v_id);
    WHEN 'operation' THEN
        IF EXISTS (SELECT 1 FROM payments.payment_operations AS o WHERE o.id = v_id) THEN
            RETURN jsonb_build_object('operation_id', v_id);
        END IF;
        v_payment := payments.writer_payment_lock((m ->> 2)::uuid, m ->> 6, m ->> 7, (m ->> 8)::boolean);
        IF m ->> 3 = 'capture' THEN
            IF v_payment.status <> 'requires_capture' THEN
                RAISE EXCEPTION 'payment % is %: only a payment in requires_capture can be captured', v_payment.id, v_payment.status
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = CASE WHEN v_payment.capture_method = 'automatic'
                                      THEN 'It was made with capture_method automatic: Stripe captures it when paid.'
                                      ELSE 'A manual-capture payment can be captured once the customer has paid.' END;
            END IF;
            v_amount := (m ->> 4)::bigint;
            IF v_amount > coalesce(v_payment.amount_capturable, v_payment.amount) THEN
                RAISE EXCEPTION 'amount_cents % is more than the % capturable on payment %',
                    v_amount, coalesce(v_payment.amount_capturable, v_payment.amount), v_payment.id
                    USING ERRCODE = 'invalid_parameter_value';
            END IF;
        ELSIF (m ->> 8)::boolean THEN
            IF v_payment.status NOT IN ('pending_intent', 'pending', 'requires_capture') THEN
                RAISE EXCEPTION 'payment % is %: only a payment not yet paid (pending_intent, pending) or authorised (requires_capture) can be canceled', v_payment.id, v_payment.status
                    USING ERRCODE = 'object_not_in_prerequisite_state',
                          HINT = CASE WHEN v_payment.status = 'succeeded' THEN 'Refund it instead: refund_payment.'
                                      WHEN v_payment.status = 'processing'
                                      THEN 'Stripe is settling it: wait, and refund it once it succeeds.'
                                      ELSE format('%s is final.', v_payment.status) END;
            END IF;
        ELSIF v_payment.status NOT IN ('pending_intent', 'pending') THEN
            RAISE EXCEPTION 'payment % is %: you can cancel your payment only while it is unpaid (pending_intent, pending)', v_payment.id, v_payment.status
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        SELECT * INTO v_other FROM payments.payment_operations AS o
        WHERE o.payment_id = v_payment.id AND o.status = 'requested';
        IF v_other.id IS NOT NULL THEN
            RAISE EXCEPTION 'payment % already has a % in progress (request %)', v_payment.id, v_other.operation, v_other.id
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = 'Wait for it: SELECT get_payment(...) shows the outcome.';
        END IF;
        INSERT INTO payments.payment_operations
            (id, payment_id, operation, amount, reason, requested_role, requested_user_id,
             requested_by_operator)
        VALUES (v_id, v_payment.id, m ->> 3, (m ->> 4)::bigint, m ->> 5, m ->> 6, m ->> 7,
                (m ->> 8)::boolean);
        RETURN jsonb_build_object('operation_id', v_id);
    WHEN 'refund' THEN
        IF EXISTS (SELECT 1 FROM payments.refunds AS r WHERE r.id = v_id) THEN
            RETURN jsonb_build_object('refund_id', v_id);
        END IF;
        IF NOT (m ->> 7)::boolean THEN
            RAISE EXCEPTION 'only payment_operator may refund payments' USING ERRCODE = 'insufficient_privilege';
        END IF;
        v_payment := payments.writer_payment_lock((m ->> 2)::uuid, m ->> 5, m ->> 6, true);
        IF v_payment.status <> 'succeeded' THEN
            RAISE EXCEPTION 'payment % is %: only a succeeded payment can be refunded', v_payment.id, v_payment.status
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = CASE WHEN v_payment.status IN ('pending_intent', 'pending', 'requires_capture')
                                  THEN 'Nothing is paid yet: cancel it instead (cancel_payment).'
                                  WHEN v_payment.status = 'processing'
                                  THEN 'Wait until Stripe reports it succeeded.'
                                  ELSE format('%s is final.', v_payment.status) END;
        END IF;
        IF v_payment.amount_received IS NULL THEN
            RAISE EXCEPTION 'payment %: the amount received is not known yet', v_payment.id
                USING ERRCODE = 'object_not_in_prerequisite_state',
                      HINT = format('SELECT payments.resync(%L) reads it from Stripe.', v_payment.id);
        END IF;
        -- Under the payment's row lock: every refund of this payment is
        -- recorded (here, or by an observation) holding it.
        SELECT v_payment.amount_received - coalesce(sum(r.amount), 0) INTO v_left
        FROM payments.refunds AS r
        WHERE r.payment_id = v_payment.id AND r.status NOT IN ('failed', 'canceled');
        IF v_left <= 0 THEN
            RAISE EXCEPTION 'payment % is refunded in full (% of %)', v_payment.id,
                v_payment.amount_received - v_left, v_payment.amount_received
                USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        v_amount := coalesce((m ->> 3)::bigint, v_left);
        IF v_amount > v_left THEN
            RAISE EXCEPTION 'amount_cents % is more than the % left to refund on payment %', v_amount, v_left, v_payment.id
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        INSERT INTO payments.refunds
            (id, payment_id, amount, currency, reason, source, requested_role, requested_user_id)
        VALUES (v_id, v_payment.id, v_amount, v_payment.currency, m ->> 4, 'rpc', m ->> 5, m ->> 6);
        RETURN jsonb_build_object('refund_id', v_id);
    ELSE
        RAISE EXCEPTION 'unknown loopback request %', m ->> 0 USING ERRCODE = 'invalid_parameter_value';
    END CASE;
END
$$;

-- Whether the request's job must show the database Stripe's intent before its
-- call (payments.job_operation_check): a cancel no operator asked for.
CREATE FUNCTION payments.operation_checked_first(o payments.payment_operations) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN o.operation = 'cancel' AND o.requested_by_operator IS NOT TRUE;
END
$$;

-- Why a request checked first may not go to Stripe with the payment in
-- p_status, or NULL when it may.
CREATE FUNCTION payments.operation_refusal(o payments.payment_operations, p_status text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF NOT payments.operation_checked_first(o) OR p_status IN ('pending_intent', 'pending', 'canceled') THEN
        -- Unpaid; or canceled already, which the cancel then finds at Stripe.
        RETURN NULL;
    END IF;
    RETURN CASE p_status
        WHEN 'requires_capture' THEN 'the payment was paid meanwhile; only an operator can cancel it now'
        WHEN 'failed' THEN 'the payment failed meanwhile; there is nothing to cancel'
        ELSE format('the payment was paid meanwhile (it is %s); it can no longer be canceled', p_status)
    END;
END
$$;

-- As payment_operations made it, and whether the job checks first.
DROP FUNCTION payments.job_operation_get(bigint, integer, uuid);
CREATE FUNCTION payments.job_operation_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    operation_id uuid, operation text, amount bigint, reason text, operation_status text,
    payment_id uuid, payment_status text, payment_amount bigint, currency text, description text,
    capture_method text, provider_payment_id text, payment_created_at timestamptz,
    check_first boolean
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT o.id, o.operation, o.amount, o.reason, o.status,
               p.id, p.status, p.amount, p.currency, p.description,
               p.capture_method, p.provider_payment_id, p.created_at,
               payments.operation_checked_first(o)
        FROM metadata.river_job AS j
        JOIN payments.payment_operations AS o ON o.id = payments.job_arg_uuid(j.args, 'operation_id')
        JOIN payments.transactions AS p ON p.id = o.payment_id
        WHERE j.id = p_job_id AND j.kind IN ('capture_payment', 'cancel_payment')
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;


-- The intent as Stripe has it now, shown before a request checked first goes
-- to Stripe: written on the payment as any observation (under its lock, if
-- newer), then the request decided on the payment's status. Refused: the
-- request fails with the reason and the job completes, together (completed
-- true, operation_status 'failed'). Allowed: nothing else changes and the job
-- stays this attempt's (completed false, operation_status 'requested').
-- 'mismatch' as job_operation_finish; not held: completed false, NULLs.
CREATE FUNCTION payments.job_operation_check(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_token timestamptz, p_intent jsonb
) RETURNS TABLE (
    completed boolean, operation_status text, reason text, old_status text, new_status text
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_operation payments.payment_operations;
    v_stored text;
    v_observed record;
    v_refusal text;
BEGIN
    PERFORM payments.intent_validate(p_intent, p_token);
    -- The job row first, then the payment: the order every outcome takes.
    PERFORM 1 FROM metadata.river_job AS j
    WHERE j.id = p_job_id AND j.attempt = p_attempt AND j.state = 'running'
      AND j.kind IN ('capture_payment', 'cancel_payment') AND j.queue = payments.config_queue()
    FOR UPDATE;
    IF NOT FOUND OR NOT payments.job_held(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT o.* INTO STRICT v_operation FROM metadata.river_job AS j
    JOIN payments.payment_operations AS o ON o.id = payments.job_arg_uuid(j.args, 'operation_id')
    WHERE j.id = p_job_id;
    SELECT p.provider_payment_id INTO v_stored FROM payments.transactions AS p
    WHERE p.id = v_operation.payment_id FOR UPDATE;
    IF v_stored IS DISTINCT FROM p_intent ->> 'id' AND v_stored IS NOT NULL THEN
        RETURN QUERY SELECT false, 'mismatch'::text,
            format('payment %s holds PaymentIntent %s, not %s', v_operation.payment_id, v_stored,
                   p_intent ->> 'id'),
            NULL::text, NULL::text;
        RETURN;
    END IF;
    v_observed := payments.payment_observe(v_operation.payment_id, p_token, p_intent);
    IF v_observed.result = 'ignored' THEN
        RAISE EXCEPTION 'operation %: %', v_operation.id, v_observed.reason
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    -- The payment's status now: the one just observed, or a newer one stored.
    v_refusal := payments.operation_refusal(v_operation, v_observed.new_status);
    IF v_operation.status <> 'requested' OR v_refusal IS NULL THEN
        RETURN QUERY SELECT false, v_operation.status, v_observed.reason, v_observed.old_status,
                            v_observed.new_status;
        RETURN;
    END IF;
    PERFORM payments.job_release(p_job_id, p_attempt, p_lease);
    UPDATE payments.payment_operations AS o
    SET status = 'failed', error_message = v_refusal, finished_at = now()
    WHERE o.id = v_operation.id;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, 'failed'::text, v_refusal, v_observed.old_status, v_observed.new_status;
END
$$;

REVOKE ALL ON FUNCTION
    payments.operation_checked_first(payments.payment_operations),
    payments.operation_refusal(payments.payment_operations, text),
    payments.job_operation_get(bigint, integer, uuid),
    payments.job_operation_check(bigint, integer, uuid, timestamptz, jsonb)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION
    payments.job_operation_get(bigint, integer, uuid),
    payments.job_operation_check(bigint, integer, uuid, timestamptz, jsonb)
TO payment_worker;

COMMIT;
