-- Deploy payment_worker:stripe_events
-- requires: worker_api
-- Every verified Stripe event we hold (from the webhook receiver or from a
-- backfill of GET /v1/events), and the one function that records one: it
-- stores the event and enqueues its apply_stripe_event job in the caller's
-- transaction, so an event acknowledged to Stripe is never without its job.

BEGIN;

CREATE TABLE payments.stripe_events (
    id text PRIMARY KEY CHECK (id ~ '^evt_[A-Za-z0-9_]{1,250}$'),
    type text NOT NULL CHECK (char_length(type) BETWEEN 1 AND 255),
    -- Stripe's `created`: second resolution, so it cannot order two events of
    -- one object; the apply job compares Stripe's fresh object instead.
    created timestamptz NOT NULL,
    api_version text CHECK (char_length(api_version) <= 64),
    livemode boolean NOT NULL,
    payload jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    -- The payment the event's object belongs to; NULL when it is not ours.
    payment_id uuid REFERENCES payments.transactions (id),
    source text NOT NULL CHECK (source IN ('webhook', 'backfill')),
    -- pending: its job has yet to apply it; applied; ignored: not about a
    -- payment of ours, or nothing in it for us.
    outcome text NOT NULL DEFAULT 'pending' CHECK (outcome IN ('pending', 'applied', 'ignored')),
    received_at timestamptz NOT NULL DEFAULT now(),
    processed_at timestamptz,
    error text CHECK (char_length(error) <= 5000),
    CONSTRAINT processed_when_not_pending CHECK ((outcome = 'pending') = (processed_at IS NULL)),
    CONSTRAINT ours_unless_ignored CHECK (outcome = 'ignored' OR payment_id IS NOT NULL)
);

CREATE INDEX stripe_events_pending_idx ON payments.stripe_events (received_at)
    WHERE outcome = 'pending';
CREATE INDEX stripe_events_created_idx ON payments.stripe_events (created);
CREATE INDEX stripe_events_payment_idx ON payments.stripe_events (payment_id, created)
    WHERE payment_id IS NOT NULL;
CREATE INDEX transactions_provider_payment_id_idx ON payments.transactions (provider_payment_id)
    WHERE provider_payment_id IS NOT NULL;

-- The payment of ours an event's object belongs to: by the metadata.payment_id
-- our worker sets on every PaymentIntent (present from payment_intent.created
-- on, before the worker has stored the intent's id), else by the intent's id
-- (the object itself, or a charge's or refund's payment_intent).
CREATE FUNCTION payments.stripe_event_payment_id(p_object jsonb) RETURNS uuid
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_meta text := p_object -> 'metadata' ->> 'payment_id';
    v_intent text := CASE WHEN p_object ->> 'object' = 'payment_intent' THEN p_object ->> 'id'
                          ELSE p_object ->> 'payment_intent' END;
    v_id uuid;
BEGIN
    IF v_meta ~* '^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$' THEN
        SELECT p.id INTO v_id FROM payments.transactions AS p WHERE p.id = v_meta::uuid;
        IF FOUND THEN
            RETURN v_id;
        END IF;
    END IF;
    IF v_intent IS NOT NULL THEN
        SELECT p.id INTO v_id FROM payments.transactions AS p WHERE p.provider_payment_id = v_intent;
    END IF;
    RETURN v_id;
END
$$;

-- Records one verified event: 'stored' (with its job), 'ignored' (not ours:
-- kept, processed at once, no job) or 'duplicate' (already held: nothing
-- changes). Two deliveries of one event at once: the primary key makes the
-- second wait for the first's commit and then answer 'duplicate'.
CREATE FUNCTION payments.stripe_event_record(p_event jsonb, p_source text) RETURNS text
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_object jsonb := p_event -> 'data' -> 'object';
    v_payment uuid;
    v_inserted text;
BEGIN
    PERFORM payments.require(jsonb_typeof(p_event) = 'object', 'the event must be a JSON object');
    PERFORM payments.require(p_event ->> 'object' = 'event', 'the event''s object must be "event"');
    PERFORM payments.require(p_event ->> 'id' ~ '^evt_[A-Za-z0-9_]{1,250}$', 'the event''s id must be evt_…');
    PERFORM payments.require(char_length(p_event ->> 'type') BETWEEN 1 AND 255, 'the event needs a type');
    PERFORM payments.require(jsonb_typeof(p_event -> 'created') = 'number', 'the event needs created (seconds)');
    PERFORM payments.require(jsonb_typeof(p_event -> 'livemode') = 'boolean', 'the event needs livemode');
    PERFORM payments.require(jsonb_typeof(v_object) = 'object', 'the event needs data.object');
    PERFORM payments.require(p_source IN ('webhook', 'backfill'), 'source must be webhook or backfill');
    v_payment := payments.stripe_event_payment_id(v_object);
    INSERT INTO payments.stripe_events AS e
        (id, type, created, api_version, livemode, payload, payment_id, source, outcome, processed_at)
    VALUES (
        p_event ->> 'id', p_event ->> 'type', to_timestamp((p_event ->> 'created')::float8),
        p_event ->> 'api_version', (p_event ->> 'livemode')::boolean, p_event, v_payment, p_source,
        CASE WHEN v_payment IS NULL THEN 'ignored' ELSE 'pending' END,
        CASE WHEN v_payment IS NULL THEN now() END)
    ON CONFLICT (id) DO NOTHING
    RETURNING e.outcome INTO v_inserted;
    IF v_inserted IS NULL THEN
        RETURN 'duplicate';
    ELSIF v_inserted = 'ignored' THEN
        RETURN 'ignored';
    END IF;
    INSERT INTO metadata.river_job (args, kind, max_attempts, queue)
    SELECT jsonb_build_object('event_id', p_event ->> 'id', 'payment_id', v_payment),
           'apply_stripe_event', c.max_attempts, c.queue
    FROM payments.config AS c;
    RETURN 'stored';
END
$$;

-- The webhook receiver's group: it may record events and nothing else.
DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = 'payment_webhook') THEN
        CREATE ROLE payment_webhook NOLOGIN;
    END IF;
END
$roles$;

REVOKE ALL ON payments.stripe_events FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.stripe_event_payment_id(jsonb) FROM PUBLIC;
REVOKE ALL ON FUNCTION payments.stripe_event_record(jsonb, text) FROM PUBLIC;
GRANT USAGE ON SCHEMA payments TO payment_webhook;
GRANT EXECUTE ON FUNCTION payments.stripe_event_record(jsonb, text) TO payment_webhook;

COMMIT;
