-- Deploy payment_worker:payment_operations
-- requires: backfill_cursor
-- Money moving back and later: deferred capture, cancellation and refunds, each
-- decided inside PostgreSQL under the payment's row lock and carried to Stripe
-- exactly once by a job whose idempotency key comes from the request's own row
-- (README: "Capture, cancel and refund").
--
-- The hazards this file exists for:
-- * Over-refunding. Two refund_payment calls at once each see enough left and
--   both refund. The check and the insert happen on the loopback connection
--   in one transaction holding the payment's row lock: every refund of a
--   payment is recorded under that lock, so the sum of refunds that are not
--   failed or canceled never exceeds amount_received.
-- * A refund made twice. The create_refund job's key is the refund row's id;
--   a retry after a lost answer gets Stripe's replay, and one after Stripe may
--   have forgotten the key first lists the intent's refunds (strongly
--   consistent) for ours by metadata.refund_id.
-- * An orphaned, payable intent. A cancel of a payment whose intent is still
--   being created obtains that very intent with the create job's own keys,
--   then cancels it, so whichever of the two jobs finishes first the intent
--   ends canceled.
-- * Who may do what. Capture and refund are for payment_operator only; a
--   client may cancel its own payment while unpaid. The caller's role is the
--   one it acts as (SET ROLE, which needs membership, or its login), never a
--   setting it could write.

BEGIN;

-- --- the payment's new columns -----------------------------------------------------------

ALTER TABLE payments.transactions
    ADD COLUMN capture_method text NOT NULL DEFAULT 'automatic'
        CONSTRAINT capture_method_known CHECK (capture_method IN ('automatic', 'manual')),
    -- The authorisation's deadline (the charge's payment_method_details.card.capture_before).
    ADD COLUMN capture_before timestamptz,
    ADD COLUMN amount_capturable bigint CHECK (amount_capturable >= 0),
    ADD COLUMN cancellation_reason text CHECK (char_length(cancellation_reason) <= 255);

CREATE INDEX transactions_capture_before_idx ON payments.transactions (capture_before)
    WHERE status = 'requires_capture';

-- capture_method joins the fields that never change: the create job's key
-- stands for it too.
CREATE OR REPLACE FUNCTION payments.transactions_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.owner_role, NEW.user_id, NEW.amount, NEW.currency, NEW.description, NEW.provider,
        NEW.created_at, NEW.capture_method)
       IS DISTINCT FROM
       (OLD.id, OLD.owner_role, OLD.user_id, OLD.amount, OLD.currency, OLD.description, OLD.provider,
        OLD.created_at, OLD.capture_method) THEN
        RAISE EXCEPTION 'payment %: id, owner, amount, currency, description, provider and capture method cannot change', OLD.id;
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

-- --- capture and cancel requests -----------------------------------------------------------

CREATE TABLE payments.payment_operations (
    id uuid PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments.transactions (id),
    operation text NOT NULL CHECK (operation IN ('capture', 'cancel')),
    -- A capture's amount in minor units; NULL captures all that is capturable.
    amount bigint CHECK (amount > 0 AND amount <= 99999999),
    reason text CHECK (reason IN ('duplicate', 'fraudulent', 'requested_by_customer', 'abandoned')),
    status text NOT NULL DEFAULT 'requested' CHECK (status IN ('requested', 'succeeded', 'failed')),
    error_message text CHECK (char_length(error_message) <= 5000),
    -- Who asked: the login (session_user) and, through PostgREST, the JWT sub.
    requested_role text NOT NULL,
    requested_user_id text,
    created_at timestamptz NOT NULL DEFAULT now(),
    finished_at timestamptz,
    CONSTRAINT operation_fields CHECK (
        (operation = 'capture' AND reason IS NULL) OR (operation = 'cancel' AND amount IS NULL)),
    CONSTRAINT operation_failure_has_reason CHECK (status <> 'failed' OR error_message IS NOT NULL),
    CONSTRAINT operation_finished CHECK ((status = 'requested') = (finished_at IS NULL))
);

-- One capture or cancel at a time per payment: Stripe captures an intent once,
-- and a cancel racing a capture would leave the outcome to chance.
CREATE UNIQUE INDEX payment_operations_one_requested_idx ON payments.payment_operations (payment_id)
    WHERE status = 'requested';
CREATE INDEX payment_operations_payment_idx ON payments.payment_operations (payment_id, created_at);

CREATE FUNCTION payments.payment_operations_guard_update() RETURNS trigger
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

CREATE TRIGGER payment_operations_guard_update
    BEFORE UPDATE ON payments.payment_operations
    FOR EACH ROW EXECUTE FUNCTION payments.payment_operations_guard_update();

-- --- refunds ---------------------------------------------------------------------------------

CREATE TABLE payments.refunds (
    id uuid PRIMARY KEY,
    payment_id uuid NOT NULL REFERENCES payments.transactions (id),
    amount bigint NOT NULL CHECK (amount > 0),
    currency text NOT NULL REFERENCES payments.currency (code),
    reason text CHECK (char_length(reason) <= 255),
    -- pending_refund until Stripe has it, then Stripe's refund status.
    status text NOT NULL DEFAULT 'pending_refund' CONSTRAINT refund_status_known CHECK (status IN (
        'pending_refund', 'pending', 'requires_action', 'succeeded', 'failed', 'canceled')),
    provider_refund_id text UNIQUE CHECK (char_length(provider_refund_id) BETWEEN 1 AND 255),
    -- Stripe's failure_reason, or why Stripe refused or we gave it up.
    failure_reason text CHECK (char_length(failure_reason) <= 5000),
    -- rpc: made by refund_payment; stripe: found at Stripe (a dashboard refund).
    source text NOT NULL CHECK (source IN ('rpc', 'stripe')),
    requested_role text,
    requested_user_id text,
    -- The observation token of what the row reflects (as on payments).
    provider_synced_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT refund_reason_known CHECK (source <> 'rpc' OR reason IS NULL
        OR reason IN ('duplicate', 'fraudulent', 'requested_by_customer')),
    CONSTRAINT refund_found_at_stripe CHECK (source <> 'stripe' OR provider_refund_id IS NOT NULL),
    CONSTRAINT refund_made_by_rpc CHECK (source <> 'rpc' OR requested_role IS NOT NULL)
);

CREATE INDEX refunds_payment_idx ON payments.refunds (payment_id, created_at);
CREATE INDEX refunds_open_idx ON payments.refunds (status, (coalesce(provider_synced_at, updated_at)))
    WHERE status IN ('pending_refund', 'pending', 'requires_action');

-- Stripe's refund lifecycle: pending or requires_action until it succeeds,
-- fails or is canceled; a succeeded refund may still fail later (the bank
-- returns it). One given up before Stripe confirmed it (failed, no id yet)
-- is taken back when Stripe turns out to hold it.
CREATE FUNCTION payments.refund_transition_allowed(p_from text, p_to text, p_adopting boolean)
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

CREATE FUNCTION payments.refunds_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.payment_id, NEW.amount, NEW.currency, NEW.reason, NEW.source, NEW.requested_role,
        NEW.requested_user_id, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.payment_id, OLD.amount, OLD.currency, OLD.reason, OLD.source, OLD.requested_role,
        OLD.requested_user_id, OLD.created_at) THEN
        RAISE EXCEPTION 'refund %: id, payment, amount, currency, reason and source cannot change', OLD.id;
    END IF;
    IF OLD.provider_refund_id IS NOT NULL
       AND NEW.provider_refund_id IS DISTINCT FROM OLD.provider_refund_id THEN
        RAISE EXCEPTION 'refund % already is Stripe''s %', OLD.id, OLD.provider_refund_id;
    END IF;
    IF NOT payments.refund_transition_allowed(
        OLD.status, NEW.status, OLD.provider_refund_id IS NULL AND NEW.provider_refund_id IS NOT NULL) THEN
        RAISE EXCEPTION 'refund %: status cannot go from % to %', OLD.id, OLD.status, NEW.status
            USING DETAIL = CASE WHEN OLD.status IN ('failed', 'canceled')
                                THEN format('%s is final.', OLD.status)
                                ELSE 'Stripe makes no such move.' END;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER refunds_guard_update
    BEFORE UPDATE ON payments.refunds
    FOR EACH ROW EXECUTE FUNCTION payments.refunds_guard_update();

-- --- their jobs ------------------------------------------------------------------------------

-- A request's job is inserted with it: both become visible, and the workers
-- are woken (river_insert_notify), at the loopback's commit.
CREATE FUNCTION payments.payment_operations_enqueue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO metadata.river_job (args, kind, max_attempts, queue)
    SELECT jsonb_build_object('operation_id', NEW.id, 'payment_id', NEW.payment_id),
           CASE NEW.operation WHEN 'capture' THEN 'capture_payment' ELSE 'cancel_payment' END,
           c.max_attempts, c.queue
    FROM payments.config AS c;
    RETURN NULL;
END
$$;

CREATE TRIGGER payment_operations_enqueue
    AFTER INSERT ON payments.payment_operations
    FOR EACH ROW EXECUTE FUNCTION payments.payment_operations_enqueue();

CREATE FUNCTION payments.refunds_enqueue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO metadata.river_job (args, kind, max_attempts, queue)
    SELECT jsonb_build_object('refund_id', NEW.id, 'payment_id', NEW.payment_id),
           'create_refund', c.max_attempts, c.queue
    FROM payments.config AS c;
    RETURN NULL;
END
$$;

CREATE TRIGGER refunds_enqueue
    AFTER INSERT ON payments.refunds
    FOR EACH ROW WHEN (NEW.source = 'rpc')
    EXECUTE FUNCTION payments.refunds_enqueue();

CREATE FUNCTION payments.job_arg_uuid(p_args jsonb, p_key text) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT CASE WHEN p_args ->> p_key ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                    THEN (p_args ->> p_key)::uuid END
    );
END
$$;

-- capture_payment or cancel_payment given up: its request fails, with the
-- last error's caller message (Stripe's refusal) or a neutral sentence.
CREATE FUNCTION payments.payment_operation_given_up(
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

-- create_refund given up before Stripe confirmed the refund: it fails (and
-- its amount may be refunded again). Should Stripe hold it after all, the
-- event path or reconciliation takes it back by its metadata.refund_id.
CREATE FUNCTION payments.create_refund_given_up(
    p_job_id bigint, p_args jsonb, p_caller_message text
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE payments.refunds AS r
    SET status = 'failed',
        failure_reason = coalesce(
            left(nullif(p_caller_message, ''), 5000),
            format('the refund could not be made (refund %s); the operator has the details', r.id))
    WHERE r.id = payments.job_arg_uuid(p_args, 'refund_id') AND r.status = 'pending_refund';
END
$$;

INSERT INTO payments.job_kind (kind, given_up) VALUES
    ('capture_payment', 'payments.payment_operation_given_up'),
    ('cancel_payment', 'payments.payment_operation_given_up'),
    ('create_refund', 'payments.create_refund_given_up');

-- --- observations: a PaymentIntent and its refunds as Stripe reports them --------------------

-- One refund as Stripe reports it, on a payment whose row lock the caller
-- holds: matched by Stripe's id, else taken back by our metadata.refund_id,
-- else a refund made elsewhere (the dashboard), recorded. Its status is
-- written only when p_token is newer than the row's. Returns written, stale,
-- refused (no such move; reason in the log) or ignored.
-- p_refund: {id, status, amount, currency, reason, failure_reason, metadata_refund_id}.
CREATE FUNCTION payments.refund_observe(p_payment payments.transactions, p_token timestamptz, p_refund jsonb)
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

-- Writes an observed PaymentIntent on a payment: under its row lock, if the
-- observation is newer than the stored one and a move Stripe can make;
-- adopts the intent of a payment that has none stored when Stripe says it
-- was made for it; then writes the refunds it carries (p_intent.refunds:
-- absent means not looked at). p_intent: {id, status, amount, currency,
-- amount_received, amount_capturable, capture_before (unix seconds),
-- cancellation_reason, client_secret, metadata_payment_id,
-- last_payment_error: null | {message, code, decline_code}, refunds}.
-- result: written, stale, refused (reason) or ignored (reason).
CREATE FUNCTION payments.payment_observe(
    p_payment_id uuid, p_token timestamptz, p_intent jsonb,
    OUT result text, OUT reason text, OUT old_status text, OUT new_status text
)
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payment payments.transactions;
    v_intent_id constant text := p_intent ->> 'id';
    v_provider_status constant text := p_intent ->> 'status';
    v_status constant text := payments.status_of_stripe(p_intent ->> 'status');
    v_error constant jsonb := CASE WHEN jsonb_typeof(p_intent -> 'last_payment_error') = 'object'
                                   THEN p_intent -> 'last_payment_error' END;
    v_adopt boolean := false;
    v_refund jsonb;
BEGIN
    SELECT * INTO v_payment FROM payments.transactions AS p WHERE p.id = p_payment_id FOR UPDATE;
    old_status := v_payment.status;
    new_status := v_payment.status;
    IF v_payment.id IS NULL THEN
        result := 'ignored';
        reason := 'the job''s payment does not exist';
        RETURN;
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
            result := 'ignored';
            reason := format('PaymentIntent %s is not payment %s''s (%s, which has none stored)',
                             v_intent_id, v_payment.id, v_payment.status);
            RETURN;
        END IF;
    ELSIF v_payment.provider_payment_id <> v_intent_id THEN
        result := 'ignored';
        reason := format('PaymentIntent %s is not payment %s''s (%s)',
                         v_intent_id, v_payment.id, v_payment.provider_payment_id);
        RETURN;
    END IF;
    IF p_token <= v_payment.provider_synced_at THEN
        result := 'stale';
    ELSIF NOT payments.status_transition_allowed(v_payment.status, v_status) THEN
        result := 'refused';
        reason := format('Stripe reports %s (%s) for payment %s, which is %s: %s',
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
            amount_capturable = coalesce((p_intent ->> 'amount_capturable')::bigint, p.amount_capturable),
            -- Given once per authorisation, and it never moves.
            capture_before = coalesce(to_timestamp((p_intent ->> 'capture_before')::float8), p.capture_before),
            cancellation_reason = coalesce(left(p_intent ->> 'cancellation_reason', 255), p.cancellation_reason),
            last_payment_error_message = CASE WHEN v_error IS NULL THEN p.last_payment_error_message
                                              ELSE left(v_error ->> 'message', 5000) END,
            last_payment_error_code = CASE WHEN v_error IS NULL THEN p.last_payment_error_code
                                           ELSE left(v_error ->> 'code', 255) END,
            last_payment_error_decline_code = CASE WHEN v_error IS NULL THEN p.last_payment_error_decline_code
                                                   ELSE left(v_error ->> 'decline_code', 255) END,
            provider_synced_at = p_token
        WHERE p.id = v_payment.id
        RETURNING * INTO v_payment;
        result := 'written';
        new_status := v_status;
    END IF;
    IF jsonb_typeof(p_intent -> 'refunds') = 'array' THEN
        FOR v_refund IN SELECT jsonb_array_elements(p_intent -> 'refunds') LOOP
            PERFORM payments.refund_observe(v_payment, p_token, v_refund);
        END LOOP;
    END IF;
END
$$;

CREATE FUNCTION payments.intent_validate(p_intent jsonb, p_token timestamptz) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.require(jsonb_typeof(p_intent) = 'object', 'intent must be a JSON object');
    PERFORM payments.require(char_length(p_intent ->> 'id') BETWEEN 1 AND 255, 'intent needs its id');
    PERFORM payments.require(payments.status_of_stripe(p_intent ->> 'status') IS NOT NULL,
                             format('intent status %s is not a PaymentIntent status', p_intent ->> 'status'));
    PERFORM payments.require(coalesce(jsonb_typeof(p_intent -> 'amount_received'), 'null') IN ('number', 'null'),
                             'amount_received must be a number');
    PERFORM payments.require(coalesce(jsonb_typeof(p_intent -> 'amount_capturable'), 'null') IN ('number', 'null'),
                             'amount_capturable must be a number');
    PERFORM payments.require(coalesce(jsonb_typeof(p_intent -> 'capture_before'), 'null') IN ('number', 'null'),
                             'capture_before must be unix seconds');
    PERFORM payments.require(coalesce(jsonb_typeof(p_intent -> 'refunds'), 'null') IN ('array', 'null'),
                             'refunds must be an array');
    -- A token from the future would freeze the row against every real observation.
    PERFORM payments.require(p_token IS NOT NULL AND p_token <= clock_timestamp(),
                             'token must be one payments.observation_token() returned');
END
$$;

-- As before, now through payments.payment_observe (new fields, refunds).
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
    v_observed record;
    v_age float8;
BEGIN
    PERFORM payments.intent_validate(p_intent, p_token);
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text, NULL::text, NULL::text, NULL::float8;
        RETURN;
    END IF;
    SELECT j.kind, j.args INTO v_kind, v_args FROM metadata.river_job AS j WHERE j.id = p_job_id;
    v_observed := payments.payment_observe(payments.job_lifecycle_payment_id(v_kind, v_args), p_token, p_intent);
    v_age := payments.job_event_finish(v_kind, v_args,
                                       CASE WHEN v_observed.result = 'ignored' THEN 'ignored' ELSE 'applied' END,
                                       v_observed.reason);
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_observed.result, v_observed.reason, v_observed.old_status,
                        v_observed.new_status, v_age;
END
$$;

-- --- what a worker calls for the new jobs ----------------------------------------------------

-- The create job's payment gains its capture method and creation time (the
-- cancel job walks the create job's keys from it).
DROP FUNCTION payments.job_payment_get(bigint, integer, uuid);
CREATE FUNCTION payments.job_payment_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    id uuid, amount bigint, currency text, description text, status text, provider_payment_id text,
    capture_method text, created_at timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT p.id, p.amount, p.currency, p.description, p.status, p.provider_payment_id,
               p.capture_method, p.created_at
        FROM metadata.river_job AS j
        JOIN payments.transactions AS p ON p.id = payments.job_payment_id(j.kind, j.args)
        WHERE j.id = p_job_id
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;

-- A capture_payment or cancel_payment job's request and payment, without the
-- client secret, while this attempt holds the job.
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

-- Stripe's answer to a capture or cancel: written on the payment as any
-- observation, then the request decided by what Stripe reports (a capture
-- succeeded when the intent is succeeded or processing, a cancel when
-- canceled), the job completed: one transaction, fenced by the lease.
-- operation_status 'mismatch' (job not completed, lease kept): the payment
-- holds another intent than the one answered; the worker retries, and its
-- next attempt works on the stored one.
CREATE FUNCTION payments.job_operation_finish(
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
    v_status text;
    v_reason text;
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
    PERFORM payments.job_release(p_job_id, p_attempt, p_lease);
    v_observed := payments.payment_observe(v_operation.payment_id, p_token, p_intent);
    IF v_observed.result = 'ignored' THEN
        -- Not adopted (not made for this payment): the request stays open.
        RAISE EXCEPTION 'operation %: %', v_operation.id, v_observed.reason
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF v_operation.status = 'requested' THEN
        IF (v_operation.operation = 'capture' AND p_intent ->> 'status' IN ('succeeded', 'processing'))
           OR (v_operation.operation = 'cancel' AND p_intent ->> 'status' = 'canceled') THEN
            v_status := 'succeeded';
        ELSE
            v_status := 'failed';
            v_reason := format('Stripe reports PaymentIntent %s as %s', p_intent ->> 'id', p_intent ->> 'status');
        END IF;
        UPDATE payments.payment_operations AS o
        SET status = v_status, error_message = v_reason, finished_at = now()
        WHERE o.id = v_operation.id;
    ELSE
        v_status := v_operation.status;
    END IF;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_status, coalesce(v_reason, v_observed.reason),
                        v_observed.old_status, v_observed.new_status;
END
$$;

-- A create_refund job's refund and payment, while this attempt holds the job.
CREATE FUNCTION payments.job_refund_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    refund_id uuid, amount bigint, currency text, reason text, refund_status text,
    provider_refund_id text, payment_id uuid, provider_payment_id text, refund_created_at timestamptz
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT r.id, r.amount, r.currency, r.reason, r.status, r.provider_refund_id,
               p.id, p.provider_payment_id, r.created_at
        FROM metadata.river_job AS j
        JOIN payments.refunds AS r ON r.id = payments.job_arg_uuid(j.args, 'refund_id')
        JOIN payments.transactions AS p ON p.id = r.payment_id
        WHERE j.id = p_job_id AND j.kind = 'create_refund'
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;

-- Stripe's refund for a create_refund job: stored on its row (Stripe's id,
-- and its status if the token is newer), the job completed, together.
-- result: as payments.refund_observe; 'ignored' when Stripe's refund is not
-- this row's (another amount, payment or currency), which is then left alone.
CREATE FUNCTION payments.job_refund_finish(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_token timestamptz, p_refund jsonb
) RETURNS TABLE (completed boolean, result text, refund_status text)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_refund payments.refunds;
    v_payment payments.transactions;
    v_result text;
BEGIN
    PERFORM payments.require(jsonb_typeof(p_refund) = 'object', 'refund must be a JSON object');
    PERFORM payments.require(char_length(p_refund ->> 'id') BETWEEN 1 AND 255, 'refund needs its id');
    PERFORM payments.require(p_refund ->> 'status' IN ('pending', 'requires_action', 'succeeded', 'failed', 'canceled'),
                             format('refund status %s is not a Refund status', p_refund ->> 'status'));
    PERFORM payments.require(p_token IS NOT NULL AND p_token <= clock_timestamp(),
                             'token must be one payments.observation_token() returned');
    PERFORM 1 FROM metadata.river_job AS j
    WHERE j.id = p_job_id AND j.attempt = p_attempt AND j.kind = 'create_refund';
    IF NOT FOUND OR NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::text, NULL::text;
        RETURN;
    END IF;
    SELECT r.* INTO STRICT v_refund FROM metadata.river_job AS j
    JOIN payments.refunds AS r ON r.id = payments.job_arg_uuid(j.args, 'refund_id')
    WHERE j.id = p_job_id;
    SELECT * INTO STRICT v_payment FROM payments.transactions AS p WHERE p.id = v_refund.payment_id FOR UPDATE;
    IF (p_refund ->> 'amount')::bigint IS DISTINCT FROM v_refund.amount
       OR upper(p_refund ->> 'currency') IS DISTINCT FROM v_refund.currency
       OR p_refund ->> 'metadata_refund_id' IS DISTINCT FROM v_refund.id::text THEN
        -- Never ours, whatever the key said: the row fails rather than wait forever.
        v_result := 'ignored';
        UPDATE payments.refunds AS r
        SET status = 'failed',
            failure_reason = format('Stripe answered with refund %s of %s %s for request %s: not this refund; check it in Stripe',
                                    p_refund ->> 'id', p_refund ->> 'amount', p_refund ->> 'currency',
                                    coalesce(p_refund ->> 'metadata_refund_id', 'none'))
        WHERE r.id = v_refund.id AND r.status = 'pending_refund';
    ELSE
        v_result := payments.refund_observe(v_payment, p_token, p_refund);
    END IF;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_result, (SELECT r.status FROM payments.refunds AS r WHERE r.id = v_refund.id);
END
$$;

-- --- who is calling ----------------------------------------------------------------------------

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'payment_operator') THEN
        CREATE ROLE payment_operator NOLOGIN;
    END IF;
END
$roles$;

-- Whether the caller acts with payment_operator's privileges. The role it
-- acts as is the `role` setting, which only SET ROLE writes and SET ROLE needs
-- membership; SECURITY DEFINER leaves it alone. Membership is followed as
-- privileges are inherited (through INHERIT roles only), and a superuser is
-- not an operator until it says so (SET ROLE payment_operator): a PostgREST
-- authenticator, NOINHERIT, counts only once PostgREST has switched to the
-- JWT's role.
CREATE FUNCTION payments.caller_is_operator() RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_role constant text := coalesce(nullif(current_setting('role'), 'none'), session_user::text);
BEGIN
    RETURN EXISTS (
        WITH RECURSIVE acting (oid, inherits) AS (
            SELECT r.oid, r.rolinherit FROM pg_catalog.pg_roles AS r WHERE r.rolname = v_role
            UNION
            SELECT g.oid, g.rolinherit
            FROM acting AS a
            JOIN pg_catalog.pg_auth_members AS m ON m.member = a.oid
            JOIN pg_catalog.pg_roles AS g ON g.oid = m.roleid
            WHERE a.inherits
        )
        SELECT 1 FROM acting AS a JOIN pg_catalog.pg_roles AS r ON r.oid = a.oid
        WHERE r.rolname = 'payment_operator');
END
$$;

-- --- the loopback, for every request ---------------------------------------------------------

CREATE OR REPLACE FUNCTION payments.loopback_ticket_check(p_message text, p_ticket text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ticket IS NULL OR p_ticket IS DISTINCT FROM payments.loopback_ticket(p_message) THEN
        RAISE EXCEPTION 'only the payment RPCs may record or read payments, operations and refunds through the loopback'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

-- A payment the caller may act on: the owner's identity matches, or the
-- caller is an operator. Not found and not yours read the same.
CREATE FUNCTION payments.writer_payment_lock(p_id uuid, p_role text, p_user_id text, p_operator boolean)
RETURNS payments.transactions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payment payments.transactions;
BEGIN
    SELECT * INTO v_payment FROM payments.transactions AS p WHERE p.id = p_id FOR UPDATE;
    IF v_payment.id IS NULL OR NOT (
        p_operator OR (v_payment.owner_role = p_role AND v_payment.user_id IS NOT DISTINCT FROM p_user_id)) THEN
        RAISE EXCEPTION 'payment % does not exist (or is not yours)', p_id
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN v_payment;
END
$$;

-- What the loopback login may do, each message checked against its ticket:
--   ["payment", id, owner_role, user_id, amount, currency, description, capture_method]
--   ["operation", id, payment_id, capture|cancel, amount, reason, role, user_id, operator]
--   ["refund", id, payment_id, amount, reason, role, user_id, operator]
--   ["read_operation", id], ["read_refund", id]
-- A request's id is chosen by the RPC, so a retry after a broken loopback
-- connection finds it recorded instead of recording it twice. Each check runs
-- under the payment's row lock, in the transaction that records the request.
CREATE FUNCTION payments.writer_request(p_message text, p_ticket text) RETURNS jsonb
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

-- Sends one request over the session's loopback connection, where it commits.
CREATE FUNCTION payments.loopback_request(p_message jsonb) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sql constant text := format('SELECT payments.writer_request(%L, %L)',
                                  p_message::text, payments.loopback_ticket(p_message::text));
    v_conn text := payments.loopback_connection();
    v_answer jsonb;
BEGIN
    SELECT t.a INTO v_answer FROM dblink(v_conn, v_sql) AS t(a jsonb);
    RETURN v_answer;
EXCEPTION WHEN connection_exception THEN
    -- The loopback connection died since it was opened: a new one, once.
    PERFORM dblink_disconnect(v_conn);
    SELECT t.a INTO v_answer FROM dblink(payments.loopback_connection(), v_sql) AS t(a jsonb);
    RETURN v_answer;
END
$$;

-- An operation or refund row as committed now: at READ COMMITTED from this
-- session, else through the loopback (a REPEATABLE READ snapshot never moves).
CREATE FUNCTION payments.request_read_committed(p_kind text, p_id uuid) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF current_setting('transaction_isolation') <> 'read committed' THEN
        RETURN payments.loopback_request(jsonb_build_array('read_' || p_kind, p_id));
    ELSIF p_kind = 'operation' THEN
        RETURN (SELECT to_jsonb(o) FROM payments.payment_operations AS o WHERE o.id = p_id);
    ELSE
        RETURN (SELECT to_jsonb(r) FROM payments.refunds AS r WHERE r.id = p_id);
    END IF;
END
$$;

-- Waits for the worker's answer to a request, as payment_await does for a payment.
CREATE FUNCTION payments.request_await(p_kind text, p_id uuid, p_what text, p_timeout interval) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start constant timestamptz := clock_timestamp();
    v_row jsonb;
    v_sleep double precision := 0.001;
BEGIN
    LOOP
        v_row := payments.request_read_committed(p_kind, p_id);
        IF v_row ->> 'status' NOT IN ('requested', 'pending_refund') THEN
            RETURN v_row;
        END IF;
        IF clock_timestamp() - v_start >= p_timeout THEN
            RAISE EXCEPTION '% of payment % (request %) is not answered after %', p_what, v_row ->> 'payment_id', p_id, p_timeout
                USING DETAIL = 'The request is recorded and the workers will still carry it out.',
                      HINT = format('Read its outcome later with SELECT get_payment(%L); check that the workers are running.',
                                    v_row ->> 'payment_id');
        END IF;
        PERFORM pg_sleep(v_sleep);
        IF clock_timestamp() - v_start > interval '100 milliseconds' THEN
            v_sleep := least(v_sleep * 1.5, 0.05);
        END IF;
    END LOOP;
END
$$;

-- --- what applications call ------------------------------------------------------------------

CREATE FUNCTION payments.amount_validate(p_name text, p_amount numeric) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_amount IS NULL THEN
        RETURN NULL;
    END IF;
    IF p_amount <> trunc(p_amount) THEN
        RAISE EXCEPTION '% must be a whole number of minor units (cents), got %', p_name, p_amount
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_amount < 1 OR p_amount > 99999999 THEN
        RAISE EXCEPTION '% must be between 1 and 99999999, got %', p_name, p_amount
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_amount::bigint;
END
$$;

CREATE FUNCTION payments.reason_validate(p_reason text, p_allowed text[]) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_reason IS NOT NULL AND NOT p_reason = ANY (p_allowed) THEN
        RAISE EXCEPTION 'reason must be one of %, got %', array_to_string(p_allowed, ', '), quote_literal(p_reason)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- The caller's identity for a request: its login, its JWT sub (through an
-- authenticator, where one is required), whether it is an operator.
CREATE FUNCTION payments.caller_identity(p_config payments.config) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_user_id constant text := payments.caller_user_id();
    v_operator constant boolean := payments.caller_is_operator();
BEGIN
    IF session_user::text = ANY (p_config.authenticator_roles) AND v_user_id IS NULL AND NOT v_operator THEN
        RAISE EXCEPTION 'no caller identity: a request through % needs a JWT with a sub claim', session_user
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN jsonb_build_object('role', session_user::text, 'user_id', v_user_id, 'operator', v_operator);
END
$$;

-- A payment as get_payment shows it; the client secret only to its owner.
CREATE FUNCTION payments.payment_view(p payments.transactions) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT payments.payment_json(p) || jsonb_build_object(
            'client_secret', CASE WHEN payments.caller_owns(p.owner_role, p.user_id) THEN p.provider_client_secret END,
            'error_message', p.error_message,
            'provider_status', p.provider_status,
            'last_payment_error', CASE WHEN p.last_payment_error_message IS NOT NULL
                                         OR p.last_payment_error_code IS NOT NULL
                                       THEN jsonb_build_object(
                                           'message', p.last_payment_error_message,
                                           'code', p.last_payment_error_code,
                                           'decline_code', p.last_payment_error_decline_code)
                                  END,
            'amount_received', round(p.amount_received::numeric / 10::numeric ^ c.minor_unit, c.minor_unit),
            'provider_synced_at', p.provider_synced_at,
            'capture_method', p.capture_method,
            'capture_before', p.capture_before,
            'amount_capturable', round(p.amount_capturable::numeric / 10::numeric ^ c.minor_unit, c.minor_unit),
            'cancellation_reason', p.cancellation_reason,
            'amount_refunded', round(coalesce(
                (SELECT sum(r.amount) FROM payments.refunds AS r
                 WHERE r.payment_id = p.id AND r.status = 'succeeded'), 0)::numeric
                / 10::numeric ^ c.minor_unit, c.minor_unit),
            'refunds', coalesce((
                SELECT jsonb_agg(payments.refund_json(r) ORDER BY r.created_at, r.id)
                FROM payments.refunds AS r WHERE r.payment_id = p.id), '[]'::jsonb))
        FROM payments.currency AS c WHERE c.code = p.currency
    );
END
$$;

CREATE FUNCTION payments.refund_json(r payments.refunds) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'refund_id', r.id,
            'payment_id', r.payment_id,
            'amount', round(r.amount::numeric / 10::numeric ^ c.minor_unit, c.minor_unit),
            'currency', r.currency,
            'status', r.status,
            'reason', r.reason,
            'failure_reason', r.failure_reason,
            'provider_refund_id', r.provider_refund_id,
            'created_at', r.created_at)
        FROM payments.currency AS c WHERE c.code = r.currency
    );
END
$$;

-- Both create RPCs: records the payment through the loopback and waits for
-- its PaymentIntent.
CREATE FUNCTION payments.payment_create(p_amount_cents numeric, p_description text, p_capture_method text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
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
    v_amount := payments.payment_validate(p_amount_cents, p_description, v_config.currency);
    IF p_capture_method IS NULL OR p_capture_method NOT IN ('automatic', 'manual') THEN
        RAISE EXCEPTION 'capture_method must be automatic or manual, got %', coalesce(quote_literal(p_capture_method), 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    v_timeout := payments.sync_timeout_for_session(v_config);
    PERFORM payments.loopback_request(jsonb_build_array(
        'payment', v_id, session_user::text, v_user_id, v_amount, v_config.currency, p_description, p_capture_method));
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

CREATE OR REPLACE FUNCTION public.create_payment_intent_sync(amount_cents numeric, description text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN payments.payment_create(amount_cents, description, 'automatic');
END
$$;

-- No defaults here: with them a two-argument call would match both functions.
CREATE FUNCTION public.create_payment_intent_sync(amount_cents numeric, description text, capture_method text)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN payments.payment_create(amount_cents, description, capture_method);
END
$$;

COMMENT ON FUNCTION public.create_payment_intent_sync(numeric, text, text) IS
    'As create_payment_intent_sync(amount_cents, description), with capture_method automatic or manual (the payment then waits in requires_capture for capture_payment).';

-- A capture or cancel: validated, recorded through the loopback under the
-- payment's lock, then waited for.
CREATE FUNCTION payments.operation_request(
    p_operation text, p_payment_id uuid, p_amount bigint, p_reason text
) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_config payments.config;
    v_who jsonb;
    v_id constant uuid := gen_random_uuid();
    v_timeout interval;
    v_operation jsonb;
    v_payment payments.transactions;
BEGIN
    SELECT * INTO STRICT v_config FROM payments.config;
    v_who := payments.caller_identity(v_config);
    v_timeout := payments.sync_timeout_for_session(v_config);
    PERFORM payments.loopback_request(jsonb_build_array(
        'operation', v_id, p_payment_id, p_operation, p_amount, p_reason,
        v_who ->> 'role', v_who ->> 'user_id', (v_who ->> 'operator')::boolean));
    v_operation := payments.request_await('operation', v_id, initcap(p_operation), v_timeout);
    IF v_operation ->> 'status' = 'failed' THEN
        RAISE EXCEPTION '% failed: %', initcap(p_operation), v_operation ->> 'error_message'
            USING DETAIL = format('payment_id %s, request %s', p_payment_id, v_id);
    END IF;
    v_payment := payments.payment_read_committed(p_payment_id);
    RETURN payments.payment_view(v_payment);
END
$$;

CREATE FUNCTION public.capture_payment(payment_id uuid, amount_cents numeric DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_amount bigint;
BEGIN
    IF capture_payment.payment_id IS NULL THEN
        RAISE EXCEPTION 'payment_id is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT payments.caller_is_operator() THEN
        RAISE EXCEPTION 'only payment_operator may capture payments' USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_amount := payments.amount_validate('amount_cents', amount_cents);
    RETURN payments.operation_request('capture', capture_payment.payment_id, v_amount, NULL);
END
$$;

COMMENT ON FUNCTION public.capture_payment(uuid, numeric) IS
    'Captures an authorised payment (requires_capture): all of it, or amount_cents minor units and the rest released; returns the payment as get_payment does. payment_operator only.';

CREATE FUNCTION public.cancel_payment(payment_id uuid, reason text DEFAULT NULL) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF cancel_payment.payment_id IS NULL THEN
        RAISE EXCEPTION 'payment_id is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM payments.reason_validate(reason, ARRAY['duplicate', 'fraudulent', 'requested_by_customer', 'abandoned']);
    RETURN payments.operation_request('cancel', cancel_payment.payment_id, NULL, reason);
END
$$;

COMMENT ON FUNCTION public.cancel_payment(uuid, text) IS
    'Cancels a payment not yet paid (or, for an operator, authorised), at Stripe too; reason duplicate, fraudulent, requested_by_customer or abandoned; returns the payment as get_payment does.';

CREATE FUNCTION public.refund_payment(payment_id uuid, amount_cents numeric DEFAULT NULL, reason text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_config payments.config;
    v_who jsonb;
    v_amount bigint;
    v_id constant uuid := gen_random_uuid();
    v_timeout interval;
    v_refund payments.refunds;
BEGIN
    IF refund_payment.payment_id IS NULL THEN
        RAISE EXCEPTION 'payment_id is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF NOT payments.caller_is_operator() THEN
        RAISE EXCEPTION 'only payment_operator may refund payments' USING ERRCODE = 'insufficient_privilege';
    END IF;
    v_amount := payments.amount_validate('amount_cents', amount_cents);
    PERFORM payments.reason_validate(reason, ARRAY['duplicate', 'fraudulent', 'requested_by_customer']);
    SELECT * INTO STRICT v_config FROM payments.config;
    v_who := payments.caller_identity(v_config);
    v_timeout := payments.sync_timeout_for_session(v_config);
    PERFORM payments.loopback_request(jsonb_build_array(
        'refund', v_id, refund_payment.payment_id, v_amount, reason,
        v_who ->> 'role', v_who ->> 'user_id', (v_who ->> 'operator')::boolean));
    v_refund := jsonb_populate_record(NULL::payments.refunds,
                                      payments.request_await('refund', v_id, 'Refund', v_timeout));
    IF v_refund.status = 'failed' THEN
        RAISE EXCEPTION 'Refund failed: %', v_refund.failure_reason
            USING DETAIL = format('payment_id %s, refund %s', v_refund.payment_id, v_refund.id);
    END IF;
    RETURN payments.refund_json(v_refund) - 'failure_reason' - 'provider_refund_id' - 'created_at';
END
$$;

COMMENT ON FUNCTION public.refund_payment(uuid, numeric, text) IS
    'Refunds amount_cents minor units of a succeeded payment (NULL: what is left); reason duplicate, fraudulent or requested_by_customer; returns {refund_id, payment_id, amount, currency, status, reason}. payment_operator only.';

CREATE OR REPLACE FUNCTION public.get_payment(payment_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT payments.payment_view(p)
        FROM payments.transactions AS p
        WHERE p.id = get_payment.payment_id
          AND (payments.caller_owns(p.owner_role, p.user_id) OR payments.caller_is_operator())
    );
END
$$;

COMMENT ON FUNCTION public.get_payment(uuid) IS
    'The caller''s payment (any payment, for payment_operator; its client_secret only for the owner) as create_payment_intent_sync returns it, plus error_message, provider_status, last_payment_error, amount_received, provider_synced_at, capture_method, capture_before, amount_capturable, cancellation_reason, amount_refunded and refunds; NULL if absent or not the caller''s.';

CREATE OR REPLACE FUNCTION payments.resync(payment_id uuid) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_payment payments.transactions;
BEGIN
    SELECT * INTO v_payment FROM payments.transactions AS p WHERE p.id = resync.payment_id FOR UPDATE;
    IF v_payment.id IS NULL
       OR NOT (pg_has_role(session_user, current_user, 'MEMBER')
               OR payments.caller_is_operator()
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

-- --- what the leader calls -------------------------------------------------------------------

-- The reconciler, as before, and now also payments whose refunds Stripe still
-- has open (pending, requires_action) and which have not been read for as long.
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
    FOR v_id IN
        SELECT p.id FROM payments.transactions AS p
        WHERE p.id IN (
            SELECT r.payment_id FROM payments.refunds AS r
            WHERE r.status IN ('pending', 'requires_action')
              AND coalesce(r.provider_synced_at, r.updated_at) < now() - make_interval(secs => p_after_seconds))
          AND coalesce(p.provider_synced_at, p.updated_at) < now() - make_interval(secs => p_after_seconds)
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

-- --- what the exporter reads -----------------------------------------------------------------

-- Authorisations Stripe will cancel within p_within_seconds unless captured,
-- and the seconds to the soonest deadline (0 when none).
CREATE FUNCTION payments.payment_authorization_expiring(p_within_seconds float8)
RETURNS TABLE (payments bigint, soonest_seconds float8)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT count(*), coalesce(greatest(extract(epoch FROM min(p.capture_before) - now()), 0), 0)::float8
        FROM payments.transactions AS p
        WHERE p.status = 'requires_capture'
          AND p.capture_before < now() + make_interval(secs => p_within_seconds);
END
$$;

-- Refunds not yet final, by status (every such status has a row).
CREATE FUNCTION payments.refund_open_counts() RETURNS TABLE (status text, refunds bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT s.status, count(r.id)
        FROM unnest(ARRAY['pending_refund', 'pending', 'requires_action']) AS s (status)
        LEFT JOIN payments.refunds AS r
            ON r.status = s.status AND r.status IN ('pending_refund', 'pending', 'requires_action')
        GROUP BY s.status;
END
$$;

-- --- the loopback's functions find dblink where it lives --------------------------------------

DO $pin$
DECLARE
    v_schema constant text := (
        SELECT e.extnamespace::regnamespace::text FROM pg_extension AS e WHERE e.extname = 'dblink');
BEGIN
    EXECUTE format('ALTER FUNCTION payments.loopback_request(jsonb) SET search_path = pg_catalog, %s, pg_temp', v_schema);
END
$pin$;

-- --- grants ----------------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON FUNCTION
    public.create_payment_intent_sync(numeric, text, text),
    public.capture_payment(uuid, numeric),
    public.cancel_payment(uuid, text),
    public.refund_payment(uuid, numeric, text)
FROM PUBLIC;
REVOKE ALL ON payments.payment_operations, payments.refunds FROM PUBLIC;

DO $grants$
DECLARE
    v_role constant text := (SELECT role_name FROM payments.loopback);
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION payments.writer_request(text, text) TO %I', v_role);
END
$grants$;

GRANT EXECUTE ON FUNCTION public.create_payment_intent_sync(numeric, text, text) TO payment_client;
GRANT EXECUTE ON FUNCTION public.cancel_payment(uuid, text) TO payment_client, payment_operator;
GRANT EXECUTE ON FUNCTION
    public.capture_payment(uuid, numeric),
    public.refund_payment(uuid, numeric, text),
    public.get_payment(uuid)
TO payment_operator;
GRANT EXECUTE ON FUNCTION payments.resync(uuid) TO payment_operator;
GRANT USAGE ON SCHEMA payments TO payment_operator;
GRANT EXECUTE ON FUNCTION payments.caller_owns(text, text), payments.caller_user_id() TO payment_operator;

-- Operators read every payment but its client secret, every refund and request.
GRANT SELECT (id, user_id, amount, currency, status, error_message, provider, provider_payment_id,
              description, created_at, updated_at, owner_role, provider_status,
              last_payment_error_message, last_payment_error_code, last_payment_error_decline_code,
              amount_received, provider_synced_at, capture_method, capture_before, amount_capturable,
              cancellation_reason)
    ON payments.transactions TO payment_operator;
CREATE POLICY transactions_operator_read ON payments.transactions
    FOR SELECT TO payment_operator USING (true);
GRANT SELECT ON payments.refunds, payments.payment_operations TO payment_operator;

-- Clients read the refunds of their own payments.
GRANT SELECT ON payments.refunds TO payment_client;
ALTER TABLE payments.refunds ENABLE ROW LEVEL SECURITY;
ALTER TABLE payments.payment_operations ENABLE ROW LEVEL SECURITY;
CREATE POLICY refunds_owner_read ON payments.refunds
    FOR SELECT TO payment_client
    USING (EXISTS (SELECT 1 FROM payments.transactions AS p
                   WHERE p.id = refunds.payment_id AND payments.caller_owns(p.owner_role, p.user_id)));
CREATE POLICY refunds_operator_read ON payments.refunds
    FOR SELECT TO payment_operator USING (true);
CREATE POLICY payment_operations_operator_read ON payments.payment_operations
    FOR SELECT TO payment_operator USING (true);

GRANT EXECUTE ON FUNCTION
    payments.job_payment_get(bigint, integer, uuid),
    payments.job_operation_get(bigint, integer, uuid),
    payments.job_operation_finish(bigint, integer, uuid, timestamptz, jsonb),
    payments.job_refund_get(bigint, integer, uuid),
    payments.job_refund_finish(bigint, integer, uuid, timestamptz, jsonb)
TO payment_worker;

GRANT EXECUTE ON FUNCTION
    payments.payment_authorization_expiring(float8),
    payments.refund_open_counts()
TO payment_worker, payment_monitor;

COMMIT;
