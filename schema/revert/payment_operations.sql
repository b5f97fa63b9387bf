-- Revert payment_worker:payment_operations
-- Back to what backfill_cursor left: no capture, cancel or refund, no
-- payment_operator grants (the role stays: roles are cluster-wide), and every
-- function this change replaced as its earlier change made it.

BEGIN;

DELETE FROM payments.job_kind WHERE kind IN ('capture_payment', 'cancel_payment', 'create_refund');
-- Their jobs go with them (no given-up effect is left to apply).
DELETE FROM metadata.river_job
WHERE kind IN ('capture_payment', 'cancel_payment', 'create_refund')
  AND queue = (SELECT c.queue FROM payments.config AS c);

REVOKE ALL ON payments.transactions FROM payment_operator;
DROP POLICY transactions_operator_read ON payments.transactions;
REVOKE ALL ON FUNCTION payments.caller_owns(text, text), payments.caller_user_id() FROM payment_operator;
REVOKE ALL ON FUNCTION payments.resync(uuid) FROM payment_operator;
REVOKE ALL ON FUNCTION public.get_payment(uuid) FROM payment_operator;
REVOKE ALL ON SCHEMA payments FROM payment_operator;

DROP FUNCTION public.refund_payment(uuid, numeric, text);
DROP FUNCTION public.cancel_payment(uuid, text);
DROP FUNCTION public.capture_payment(uuid, numeric);
DROP FUNCTION public.create_payment_intent_sync(numeric, text, text);
DROP FUNCTION payments.operation_request(text, uuid, bigint, text);
DROP FUNCTION payments.payment_create(numeric, text, text);
DROP FUNCTION payments.payment_view(payments.transactions);
DROP FUNCTION payments.refund_json(payments.refunds);
DROP FUNCTION payments.caller_identity(payments.config);
DROP FUNCTION payments.reason_validate(text, text[]);
DROP FUNCTION payments.amount_validate(text, numeric);
DROP FUNCTION payments.request_await(text, uuid, text, interval);
DROP FUNCTION payments.request_read_committed(text, uuid);
DROP FUNCTION payments.loopback_request(jsonb);
DROP FUNCTION payments.writer_request(text, text);
DROP FUNCTION payments.writer_payment_lock(uuid, text, text, boolean);
DROP FUNCTION payments.caller_is_operator();
DROP FUNCTION payments.refund_open_counts();
DROP FUNCTION payments.payment_authorization_expiring(float8);
DROP FUNCTION payments.job_refund_finish(bigint, integer, uuid, timestamptz, jsonb);
DROP FUNCTION payments.job_refund_get(bigint, integer, uuid);
DROP FUNCTION payments.job_operation_finish(bigint, integer, uuid, timestamptz, jsonb);
DROP FUNCTION payments.job_operation_get(bigint, integer, uuid);

DROP TABLE payments.refunds;
DROP TABLE payments.payment_operations;
DROP FUNCTION payments.refunds_enqueue();
DROP FUNCTION payments.payment_operations_enqueue();
DROP FUNCTION payments.refunds_guard_update();
DROP FUNCTION payments.refund_transition_allowed(text, text, boolean);
DROP FUNCTION payments.payment_operations_guard_update();
DROP FUNCTION payments.create_refund_given_up(bigint, jsonb, text);
DROP FUNCTION payments.payment_operation_given_up(bigint, jsonb, text);

-- As payment_lifecycle made them.
CREATE OR REPLACE FUNCTION payments.job_payment_observe(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_token timestamptz, p_intent jsonb
) RETURNS TABLE (
    completed boolean, result text, reason text, old_status text, new_status text,
    event_age_seconds float8
)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_kind text;
    v_args jsonb;
    v_payment payments.transactions;
    v_intent_id constant text := p_intent ->> 'id';
    v_provider_status constant text := p_intent ->> 'status';
    v_status constant text := payments.status_of_stripe(p_intent ->> 'status');
    v_error constant jsonb := CASE WHEN jsonb_typeof(p_intent -> 'last_payment_error') = 'object'
                                   THEN p_intent -> 'last_payment_error' END;
    v_adopt boolean := false;
    v_result text;
    v_reason text;
    v_age float8;
BEGIN
    PERFORM payments.require(jsonb_typeof(p_intent) = 'object', 'intent must be a JSON object');
    PERFORM payments.require(char_length(v_intent_id) BETWEEN 1 AND 255, 'intent needs its id');
    PERFORM payments.require(v_status IS NOT NULL,
                             format('intent status %s is not a PaymentIntent status', v_provider_status));
    PERFORM payments.require(jsonb_typeof(p_intent -> 'amount_received') IN ('number', 'null')
                             OR p_intent -> 'amount_received' IS NULL, 'amount_received must be a number');
    -- A token from the future would freeze the row against every real observation.
    PERFORM payments.require(p_token IS NOT NULL AND p_token <= clock_timestamp(),
                             'token must be one payments.observation_token() returned');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text, NULL::text, NULL::text, NULL::float8;
        RETURN;
    END IF;
    SELECT j.kind, j.args INTO v_kind, v_args FROM metadata.river_job AS j WHERE j.id = p_job_id;
    SELECT * INTO v_payment FROM payments.transactions AS p
    WHERE p.id = payments.job_lifecycle_payment_id(v_kind, v_args)
    FOR UPDATE;
    IF v_payment.id IS NULL THEN
        v_result := 'ignored';
        v_reason := 'the job''s payment does not exist';
    ELSIF v_payment.provider_payment_id IS NULL THEN
        -- The create job has not stored its intent yet: this is it if Stripe
        -- says it was made for this payment with its amount and currency.
        IF v_payment.status = 'pending_intent'
           AND p_intent ->> 'metadata_payment_id' = v_payment.id::text
           AND (p_intent ->> 'amount')::bigint = v_payment.amount
           AND p_intent ->> 'currency' = lower(v_payment.currency)
           AND char_length(p_intent ->> 'client_secret') BETWEEN 1 AND 255 THEN
            v_adopt := true;
        ELSE
            v_result := 'ignored';
            v_reason := format('PaymentIntent %s is not payment %s''s (%s, which has none stored)',
                               v_intent_id, v_payment.id, v_payment.status);
        END IF;
    ELSIF v_payment.provider_payment_id <> v_intent_id THEN
        v_result := 'ignored';
        v_reason := format('PaymentIntent %s is not payment %s''s (%s)',
                           v_intent_id, v_payment.id, v_payment.provider_payment_id);
    END IF;
    IF v_result IS NULL THEN
        IF p_token <= v_payment.provider_synced_at THEN
            v_result := 'stale';
        ELSIF NOT payments.status_transition_allowed(v_payment.status, v_status) THEN
            v_result := 'refused';
            v_reason := format('Stripe reports %s (%s) for payment %s, which is %s: %s',
                               v_provider_status, v_intent_id, v_payment.id, v_payment.status,
                               CASE WHEN v_payment.status IN ('succeeded', 'canceled', 'failed')
                                    THEN 'final, not changed' ELSE 'no such move, not changed' END);
        ELSE
            UPDATE payments.transactions AS p
            SET status = v_status,
                provider_status = v_provider_status,
                provider_payment_id = CASE WHEN v_adopt THEN v_intent_id ELSE p.provider_payment_id END,
                provider_client_secret = CASE WHEN v_adopt THEN p_intent ->> 'client_secret'
                                              ELSE p.provider_client_secret END,
                amount_received = coalesce((p_intent ->> 'amount_received')::bigint, p.amount_received),
                last_payment_error_message = CASE WHEN v_error IS NULL THEN p.last_payment_error_message
                                                  ELSE left(v_error ->> 'message', 5000) END,
                last_payment_error_code = CASE WHEN v_error IS NULL THEN p.last_payment_error_code
                                               ELSE left(v_error ->> 'code', 255) END,
                last_payment_error_decline_code = CASE WHEN v_error IS NULL THEN p.last_payment_error_decline_code
                                                       ELSE left(v_error ->> 'decline_code', 255) END,
                provider_synced_at = p_token
            WHERE p.id = v_payment.id;
            v_result := 'written';
        END IF;
    END IF;
    v_age := payments.job_event_finish(v_kind, v_args,
                                       CASE WHEN v_result = 'ignored' THEN 'ignored' ELSE 'applied' END,
                                       v_reason);
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_result, v_reason, v_payment.status,
                        CASE WHEN v_result = 'written' THEN v_status ELSE v_payment.status END, v_age;
END
$$;

DROP FUNCTION payments.payment_observe(uuid, timestamptz, jsonb);
DROP FUNCTION payments.refund_observe(payments.transactions, timestamptz, jsonb);
DROP FUNCTION payments.intent_validate(jsonb, timestamptz);
DROP FUNCTION payments.job_arg_uuid(jsonb, text);

CREATE OR REPLACE FUNCTION payments.transactions_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.owner_role, NEW.user_id, NEW.amount, NEW.currency, NEW.description, NEW.provider, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.owner_role, OLD.user_id, OLD.amount, OLD.currency, OLD.description, OLD.provider, OLD.created_at) THEN
        RAISE EXCEPTION 'payment %: id, owner, amount, currency, description and provider cannot change', OLD.id;
    END IF;
    IF OLD.provider_payment_id IS NOT NULL
       AND NEW.provider_payment_id IS DISTINCT FROM OLD.provider_payment_id THEN
        RAISE EXCEPTION 'payment % already has PaymentIntent %', OLD.id, OLD.provider_payment_id;
    END IF;
    IF OLD.provider_client_secret IS NOT NULL
       AND NEW.provider_client_secret IS DISTINCT FROM OLD.provider_client_secret THEN
        RAISE EXCEPTION 'payment %: its client secret cannot change', OLD.id;
    END IF;
    IF NOT payments.status_transition_allowed(OLD.status, NEW.status) THEN
        RAISE EXCEPTION 'payment %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING DETAIL = CASE WHEN OLD.status IN ('succeeded', 'canceled', 'failed')
                                THEN format('%s is final.', OLD.status)
                                ELSE 'Stripe makes no such transition.' END,
                  HINT = 'README: "Payment status" lists the transitions.';
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE OR REPLACE FUNCTION public.get_payment(payment_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT payments.payment_json(p) || jsonb_build_object(
            'error_message', p.error_message,
            'provider_status', p.provider_status,
            'last_payment_error', CASE WHEN p.last_payment_error_message IS NOT NULL
                                         OR p.last_payment_error_code IS NOT NULL
                                       THEN jsonb_build_object(
                                           'message', p.last_payment_error_message,
                                           'code', p.last_payment_error_code,
                                           'decline_code', p.last_payment_error_decline_code)
                                  END,
            'amount_received', CASE WHEN p.amount_received IS NOT NULL THEN
                round(p.amount_received::numeric / 10::numeric ^ c.minor_unit, c.minor_unit) END,
            'provider_synced_at', p.provider_synced_at)
        FROM payments.transactions AS p
        JOIN payments.currency AS c ON c.code = p.currency
        WHERE p.id = get_payment.payment_id
          AND payments.caller_owns(p.owner_role, p.user_id)
    );
END
$$;

COMMENT ON FUNCTION public.get_payment(uuid) IS
    'The caller''s payment as create_payment_intent_sync returns it, plus error_message, provider_status, last_payment_error {message, code, decline_code}, amount_received and provider_synced_at; NULL if absent or not the caller''s.';


CREATE OR REPLACE FUNCTION payments.resync(payment_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payment payments.transactions;
BEGIN
    SELECT * INTO v_payment FROM payments.transactions AS p WHERE p.id = resync.payment_id FOR UPDATE;
    IF v_payment.id IS NULL
       OR NOT (pg_has_role(session_user, current_user, 'MEMBER')
               OR payments.caller_owns(v_payment.owner_role, v_payment.user_id)) THEN
        RAISE EXCEPTION 'payment % does not exist (or is not yours)', resync.payment_id
            USING ERRCODE = 'no_data_found';
    END IF;
    IF v_payment.provider_payment_id IS NULL THEN
        RAISE EXCEPTION 'payment % has no PaymentIntent yet (%): nothing to read from Stripe',
                        v_payment.id, v_payment.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN payments.sync_enqueue(v_payment.id, 0);
END
$$;

CREATE OR REPLACE FUNCTION payments.payment_reconcile_enqueue(p_after_seconds float8, p_max integer, p_rate float8)
RETURNS integer
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_count integer := 0;
    v_id uuid;
BEGIN
    PERFORM payments.require(p_after_seconds >= 1 AND p_after_seconds < 'infinity'::float8,
                             'after_seconds must be at least 1');
    PERFORM payments.require(p_max BETWEEN 1 AND 10000, 'max must be between 1 and 10000');
    PERFORM payments.require(p_rate > 0 AND p_rate <= 100, 'rate must be above 0 and at most 100 a second');
    FOR v_id IN
        SELECT p.id FROM payments.transactions AS p
        WHERE p.status IN ('pending', 'processing', 'requires_capture')
          AND coalesce(p.provider_synced_at, p.updated_at) < now() - make_interval(secs => p_after_seconds)
          AND p.provider_payment_id IS NOT NULL
        ORDER BY coalesce(p.provider_synced_at, p.updated_at)
        FOR UPDATE SKIP LOCKED
    LOOP
        EXIT WHEN v_count >= p_max;
        IF payments.sync_enqueue(v_id, v_count / p_rate) THEN
            v_count := v_count + 1;
        END IF;
    END LOOP;
    RETURN v_count;
END
$$;

-- As worker_api made it.
DROP FUNCTION payments.job_payment_get(bigint, integer, uuid);
CREATE FUNCTION payments.job_payment_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    id uuid, amount bigint, currency text, description text, status text, provider_payment_id text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT p.id, p.amount, p.currency, p.description, p.status, p.provider_payment_id
        FROM metadata.river_job AS j
        JOIN payments.transactions AS p ON p.id = payments.job_payment_id(j.kind, j.args)
        WHERE j.id = p_job_id
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;

REVOKE ALL ON FUNCTION payments.job_payment_get(bigint, integer, uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payments.job_payment_get(bigint, integer, uuid) TO payment_worker;

-- As loopback_writer made them.
CREATE OR REPLACE FUNCTION payments.loopback_ticket_check(p_message text, p_ticket text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ticket IS NULL OR p_ticket IS DISTINCT FROM payments.loopback_ticket(p_message) THEN
        RAISE EXCEPTION 'only create_payment_intent_sync may record or read payments through the loopback'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE OR REPLACE FUNCTION public.create_payment_intent_sync(amount_cents numeric, description text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_config payments.config;
    v_amount bigint;
    v_id constant uuid := gen_random_uuid();
    v_user_id constant text := payments.caller_user_id();
    v_row payments.transactions;
    v_timeout interval;
BEGIN
    SELECT * INTO STRICT v_config FROM payments.config;
    IF session_user::text = ANY (v_config.authenticator_roles) AND v_user_id IS NULL THEN
        RAISE EXCEPTION 'no caller identity: a request through % needs a JWT with a sub claim', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_amount := payments.payment_validate(amount_cents, description, v_config.currency);
    v_timeout := payments.sync_timeout_for_session(v_config);
    PERFORM payments.payment_record(v_id, session_user::text, v_user_id, v_amount, v_config.currency, description);
    v_row := payments.payment_await(v_id, v_timeout);
    IF v_row.status = 'failed' THEN
        RAISE EXCEPTION 'Payment intent creation failed: %', v_row.error_message
            USING DETAIL = format('payment_id %s', v_row.id);
    END IF;
    IF v_row.status = 'canceled' THEN
        RAISE EXCEPTION 'payment % was canceled', v_row.id;
    END IF;
    RETURN payments.payment_json(v_row);
END
$$;

DROP INDEX payments.transactions_capture_before_idx;
ALTER TABLE payments.transactions
    DROP COLUMN capture_method,
    DROP COLUMN capture_before,
    DROP COLUMN amount_capturable,
    DROP COLUMN cancellation_reason;

COMMIT;
