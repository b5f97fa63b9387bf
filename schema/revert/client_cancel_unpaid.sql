-- Revert payment_worker:client_cancel_unpaid
-- Back to what woken_wait left: requests no longer say whether an operator
-- asked, and a cancel job goes to Stripe without checking first (workers of
-- this version need job_operation_check: stop them first). Every function this
-- change replaced as payment_operations made it.

BEGIN;

DROP FUNCTION payments.job_operation_check(bigint, integer, uuid, timestamptz, jsonb);

DROP FUNCTION payments.job_operation_get(bigint, integer, uuid);
CREATE FUNCTION payments.job_operation_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    operation_id uuid, operation text, amount bigint, reason text, operation_status text,
    payment_id uuid, payment_status text, payment_amount bigint, currency text, description text,
    capture_method text, provider_payment_id text, payment_created_at timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT o.id, o.operation, o.amount, o.reason, o.status,
               p.id, p.status, p.amount, p.currency, p.description,
               p.capture_method, p.provider_payment_id, p.created_at
        FROM metadata.river_job AS j
        JOIN payments.payment_operations AS o ON o.id = payments.job_arg_uuid(j.args, 'operation_id')
        JOIN payments.transactions AS p ON p.id = o.payment_id
        WHERE j.id = p_job_id AND j.kind IN ('capture_payment', 'cancel_payment')
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;


REVOKE ALL ON FUNCTION payments.job_operation_get(bigint, integer, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payments.job_operation_get(bigint, integer, uuid) TO payment_worker;

DROP FUNCTION payments.operation_refusal(payments.payment_operations, text);
DROP FUNCTION payments.operation_checked_first(payments.payment_operations);

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
            (id, payment_id, operation, amount, reason, requested_role, requested_user_id)
        VALUES (v_id, v_payment.id, m ->> 3, (m ->> 4)::bigint, m ->> 5, m ->> 6, m ->> 7);
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

CREATE OR REPLACE FUNCTION payments.payment_operations_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.payment_id, NEW.operation, NEW.amount, NEW.reason, NEW.requested_role,
        NEW.requested_user_id, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.payment_id, OLD.operation, OLD.amount, OLD.reason, OLD.requested_role,
        OLD.requested_user_id, OLD.created_at) THEN
        RAISE EXCEPTION 'operation %: only its status and error can change', OLD.id;
    END IF;
    IF NEW.status <> OLD.status AND OLD.status <> 'requested' THEN
        RAISE EXCEPTION 'operation %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING DETAIL = format('%s is final.', OLD.status);
    END IF;
    RETURN NEW;
END
$$;


ALTER TABLE payments.payment_operations DROP COLUMN requested_by_operator;

COMMIT;
