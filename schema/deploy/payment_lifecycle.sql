-- Deploy payment_worker:payment_lifecycle
-- requires: stripe_events
-- The payment after its PaymentIntent: Stripe's status as ours, applied from
-- Stripe's current state (never from an event's history), guarded by the
-- transitions Stripe can make, announced on payments.payment_status; the
-- reconciler's and resync's sync_payment jobs; the backfill's reads.
--
-- Ordering (two jobs of one payment at once, an event delivered late): every
-- write carries an observation token, the database's clock_timestamp() taken
-- before the PaymentIntent was retrieved, and is made only if its token is
-- newer than the stored provider_synced_at, under the row's lock. A retrieve
-- that starts after its token sees Stripe at or after the token, and the event
-- of Stripe's last transition is sent after it, so the job of that event writes
-- an observation at least as new: the stored state converges on Stripe's.

BEGIN;

-- --- the payment's columns -----------------------------------------------------------------

ALTER TABLE payments.transactions
    DROP CONSTRAINT status_known,
    DROP CONSTRAINT intent_present_once_created,
    -- Stripe's PaymentIntent status as last observed; NULL before the first.
    ADD COLUMN provider_status text CONSTRAINT provider_status_known CHECK (provider_status IN (
        'requires_payment_method', 'requires_confirmation', 'requires_action', 'processing',
        'requires_capture', 'succeeded', 'canceled')),
    -- The last decline Stripe reported; kept when a later attempt succeeds.
    ADD COLUMN last_payment_error_message text CHECK (char_length(last_payment_error_message) <= 5000),
    ADD COLUMN last_payment_error_code text CHECK (char_length(last_payment_error_code) <= 255),
    ADD COLUMN last_payment_error_decline_code text CHECK (char_length(last_payment_error_decline_code) <= 255),
    ADD COLUMN amount_received bigint CHECK (amount_received >= 0),
    -- The observation token of what the row reflects (the database's clock
    -- before the PaymentIntent was retrieved).
    ADD COLUMN provider_synced_at timestamptz,
    ADD CONSTRAINT status_known CHECK (status IN (
        'pending_intent', 'pending', 'processing', 'requires_capture', 'succeeded', 'canceled', 'failed')),
    ADD CONSTRAINT intent_present_once_created CHECK (
        status NOT IN ('pending', 'processing', 'requires_capture', 'succeeded')
        OR (provider_payment_id IS NOT NULL AND provider_client_secret IS NOT NULL)),
    ADD CONSTRAINT status_matches_provider CHECK (
        provider_status IS NULL OR status = CASE
            WHEN provider_status IN ('requires_payment_method', 'requires_confirmation', 'requires_action')
            THEN 'pending' ELSE provider_status END);

-- The reconciler's stale payments and the exporter's open ones.
CREATE INDEX transactions_open_idx ON payments.transactions
    (status, (coalesce(provider_synced_at, updated_at)))
    WHERE status IN ('pending', 'processing', 'requires_capture');

-- --- Stripe's status as ours, and the moves Stripe can make ---------------------------------

CREATE FUNCTION payments.status_of_stripe(p_provider_status text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN CASE
        WHEN p_provider_status IN ('requires_payment_method', 'requires_confirmation', 'requires_action')
        THEN 'pending'
        WHEN p_provider_status IN ('processing', 'requires_capture', 'succeeded', 'canceled')
        THEN p_provider_status
    END;
END
$$;

-- Stripe's lifecycle: a failed attempt returns processing to
-- requires_payment_method; a capture may be processing; an intent may be
-- canceled while it waits for a payment method, its capture or, for some
-- payment methods, while processing. succeeded, canceled and failed (no
-- PaymentIntent could be created) are final.
CREATE FUNCTION payments.status_transition_allowed(p_from text, p_to text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN p_from = p_to OR CASE p_from
        WHEN 'pending_intent' THEN p_to IN ('pending', 'processing', 'requires_capture', 'succeeded', 'canceled', 'failed')
        WHEN 'pending' THEN p_to IN ('processing', 'requires_capture', 'succeeded', 'canceled')
        WHEN 'processing' THEN p_to IN ('pending', 'requires_capture', 'succeeded', 'canceled')
        WHEN 'requires_capture' THEN p_to IN ('processing', 'succeeded', 'canceled')
        ELSE false
    END;
END
$$;

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

-- Every status change, to LISTEN "payments.payment_status"; sent at commit,
-- only if the change commits.
CREATE FUNCTION payments.transactions_notify_status() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify('payments.payment_status',
                      jsonb_build_object('payment_id', NEW.id, 'status', NEW.status)::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_notify_status
    AFTER UPDATE OF status ON payments.transactions
    FOR EACH ROW WHEN (OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION payments.transactions_notify_status();

-- The create job stores Stripe's status of the new intent with it.
CREATE OR REPLACE FUNCTION payments.job_complete_with_intent(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_provider_payment_id text, p_client_secret text
) RETURNS TABLE (completed boolean, latency_seconds float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_latency float8;
BEGIN
    PERFORM payments.require(char_length(p_provider_payment_id) BETWEEN 1 AND 255,
                             'provider_payment_id must be 1 to 255 characters');
    PERFORM payments.require(char_length(p_client_secret) BETWEEN 1 AND 255,
                             'client_secret must be 1 to 255 characters');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::float8;
        RETURN;
    END IF;
    UPDATE payments.transactions AS p
    SET status = 'pending',
        -- What Stripe makes a new intent in; provider_synced_at stays NULL: the create's
        -- answer carries no observation token, and an event or a sync brings one.
        provider_status = 'requires_payment_method',
        provider_payment_id = p_provider_payment_id,
        provider_client_secret = p_client_secret
    FROM metadata.river_job AS j
    WHERE j.id = p_job_id
      AND p.id = payments.job_payment_id(j.kind, j.args)
      AND p.status = 'pending_intent'
    RETURNING extract(epoch FROM clock_timestamp() - p.created_at)::float8 INTO v_latency;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_latency;
END
$$;

-- --- what applications read ------------------------------------------------------------------

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

-- --- jobs of a payment's lifecycle -----------------------------------------------------------

-- The payment an apply_stripe_event or sync_payment job is for; NULL otherwise.
CREATE FUNCTION payments.job_lifecycle_payment_id(p_kind text, p_args jsonb) RETURNS uuid
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT CASE WHEN p_kind IN ('apply_stripe_event', 'sync_payment')
                     AND p_args ->> 'payment_id' ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$'
                    THEN (p_args ->> 'payment_id')::uuid END
    );
END
$$;

-- Queues one sync_payment job for the payment unless one already waits
-- (available, scheduled, retryable); a running one has taken its token
-- already, so it does not count. The caller holds the payment's row lock.
CREATE FUNCTION payments.sync_enqueue(p_payment_id uuid, p_delay_seconds float8) RETURNS boolean
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_queue constant text := payments.config_queue();
BEGIN
    IF EXISTS (
        SELECT 1 FROM metadata.river_job AS j
        WHERE j.args @> jsonb_build_object('payment_id', p_payment_id)
          AND j.kind = 'sync_payment' AND j.queue = v_queue
          AND j.state IN ('available', 'scheduled', 'retryable', 'pending')) THEN
        RETURN false;
    END IF;
    INSERT INTO metadata.river_job (args, kind, max_attempts, queue, state, scheduled_at)
    SELECT jsonb_build_object('payment_id', p_payment_id), 'sync_payment', c.max_attempts, c.queue,
           CASE WHEN p_delay_seconds > 0 THEN 'scheduled' ELSE 'available' END::metadata.river_job_state,
           now() + make_interval(secs => greatest(p_delay_seconds, 0))
    FROM payments.config AS c;
    RETURN true;
END
$$;

-- apply_stripe_event given up: its event stays pending (so the alert on
-- unapplied events fires) with the reason on it.
CREATE FUNCTION payments.apply_stripe_event_given_up(
    p_job_id bigint, p_args jsonb, p_caller_message text
) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    UPDATE payments.stripe_events AS e
    SET error = left(format('its apply job %s was given up: %s', p_job_id, coalesce(
        nullif(p_caller_message, ''),
        (SELECT j.errors[cardinality(j.errors)] ->> 'error' FROM metadata.river_job AS j WHERE j.id = p_job_id),
        'deleted unfinished')), 5000)
    WHERE e.id = p_args ->> 'event_id' AND e.outcome = 'pending';
END
$$;

INSERT INTO payments.job_kind (kind, given_up) VALUES
    ('apply_stripe_event', 'payments.apply_stripe_event_given_up'),
    ('sync_payment', NULL);

-- --- what a worker calls -----------------------------------------------------------------------

-- The database's clock: an observation token, taken before the PaymentIntent
-- is retrieved. No host's clock enters the comparison.
CREATE FUNCTION payments.observation_token() RETURNS timestamptz
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN clock_timestamp();
END
$$;

-- The job's payment and event, while this attempt holds the job.
CREATE FUNCTION payments.job_lifecycle_get(p_job_id bigint, p_attempt integer, p_lease uuid)
RETURNS TABLE (
    payment_id uuid, status text, provider_payment_id text,
    event_id text, event_type text, event_outcome text, event_intent_id text
)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT p.id, p.status, p.provider_payment_id, e.id, e.type, e.outcome,
               CASE WHEN e.payload -> 'data' -> 'object' ->> 'object' = 'payment_intent'
                    THEN e.payload -> 'data' -> 'object' ->> 'id'
                    ELSE e.payload -> 'data' -> 'object' ->> 'payment_intent' END
        FROM metadata.river_job AS j
        JOIN payments.transactions AS p ON p.id = payments.job_lifecycle_payment_id(j.kind, j.args)
        LEFT JOIN payments.stripe_events AS e
            ON j.kind = 'apply_stripe_event' AND e.id = j.args ->> 'event_id'
        WHERE j.id = p_job_id
          AND payments.job_held(p_job_id, p_attempt, p_lease);
END
$$;

-- The job's event: outcome and reason, processed now (when still pending).
-- Returns seconds from its receipt, when this call applied it.
CREATE FUNCTION payments.job_event_finish(p_kind text, p_args jsonb, p_outcome text, p_reason text)
RETURNS float8
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_age float8;
BEGIN
    IF p_kind <> 'apply_stripe_event' THEN
        RETURN NULL;
    END IF;
    UPDATE payments.stripe_events AS e
    SET outcome = p_outcome, processed_at = now(), error = left(p_reason, 5000)
    WHERE e.id = p_args ->> 'event_id' AND e.outcome = 'pending'
    RETURNING extract(epoch FROM clock_timestamp() - e.received_at)::float8 INTO v_age;
    RETURN CASE WHEN p_outcome = 'applied' THEN v_age END;
END
$$;

-- Writes an observed PaymentIntent on the job's payment, if the observation
-- is newer than the stored one and a move Stripe can make; marks the job's
-- event; completes the job: one transaction, fenced by the job's lease.
-- p_intent: {id, status, amount, currency, amount_received, client_secret,
-- metadata_payment_id, last_payment_error: null | {message, code, decline_code}}.
-- result: written, stale (an observation as new is stored), refused (final,
-- or no move Stripe makes: reason), ignored (not the payment's intent: reason).
CREATE FUNCTION payments.job_payment_observe(
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

-- Completes the job with its event ignored for `reason` (Stripe has no such
-- PaymentIntent, say), fenced by the job's lease.
CREATE FUNCTION payments.job_lifecycle_ignore(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_reason text
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_kind text;
    v_args jsonb;
BEGIN
    PERFORM payments.require(char_length(p_reason) BETWEEN 1 AND 5000, 'reason must be 1 to 5000 characters');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN false;
    END IF;
    SELECT j.kind, j.args INTO v_kind, v_args FROM metadata.river_job AS j WHERE j.id = p_job_id;
    PERFORM payments.job_event_finish(v_kind, v_args, 'ignored', p_reason);
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN true;
END
$$;

-- --- what the leader calls -------------------------------------------------------------------

-- The reconciler: up to p_max payments not final, with an intent, whose row
-- reflects Stripe as of longer ago than p_after_seconds and which have no
-- sync_payment job waiting, each get one, spread p_rate a second.
CREATE FUNCTION payments.payment_reconcile_enqueue(p_after_seconds float8, p_max integer, p_rate float8)
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

-- The backfill's starting point: Stripe's `created` of the newest event we hold.
CREATE FUNCTION payments.stripe_event_newest_created() RETURNS timestamptz
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT max(e.created) FROM payments.stripe_events AS e
    );
END
$$;

-- --- what an application calls --------------------------------------------------------------

-- Asks for the payment to be re-read from Stripe now: one sync_payment job,
-- unless one already waits (then false). The functions' owner may ask for
-- any payment; payment_client for its own only.
CREATE FUNCTION payments.resync(payment_id uuid) RETURNS boolean
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

COMMENT ON FUNCTION payments.resync(uuid) IS
    'Queues a re-read of the payment''s PaymentIntent from Stripe (at most one waits per payment); false when one already waits.';

-- --- what the exporter reads -----------------------------------------------------------------

-- Events whose apply job has not applied them: how many, and the oldest's age
-- (0 when none, so the alert's series never goes away).
CREATE FUNCTION payments.stripe_event_unapplied() RETURNS TABLE (events bigint, oldest_age_seconds float8)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT count(*), coalesce(extract(epoch FROM now() - min(e.received_at)), 0)::float8
        FROM payments.stripe_events AS e WHERE e.outcome = 'pending';
END
$$;

-- Payments not yet final, by status (every such status has a row).
CREATE FUNCTION payments.payment_open_counts() RETURNS TABLE (status text, payments bigint)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT s.status, count(p.id)
        FROM unnest(ARRAY['pending_intent', 'pending', 'processing', 'requires_capture']) AS s (status)
        LEFT JOIN payments.transactions AS p
            ON p.status = s.status AND p.status IN ('pending_intent', 'pending', 'processing', 'requires_capture')
        GROUP BY s.status;
END
$$;

-- --- grants ----------------------------------------------------------------------------------

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    payments.observation_token(),
    payments.job_lifecycle_get(bigint, integer, uuid),
    payments.job_payment_observe(bigint, integer, uuid, timestamptz, jsonb),
    payments.job_lifecycle_ignore(bigint, integer, uuid, text),
    payments.payment_reconcile_enqueue(float8, integer, float8),
    payments.stripe_event_newest_created(),
    payments.stripe_event_record(jsonb, text)
TO payment_worker;

GRANT EXECUTE ON FUNCTION payments.resync(uuid) TO payment_client;

GRANT EXECUTE ON FUNCTION
    payments.stripe_event_unapplied(),
    payments.payment_open_counts()
TO payment_worker, payment_monitor;

COMMIT;
