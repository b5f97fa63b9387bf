-- Deploy payment_worker:payments_schema
-- requires: river_schema
-- Payments, the currencies we accept, and the one row of settings that the
-- database and the worker agree on.

BEGIN;

CREATE SCHEMA payments;

-- Stripe's minimum charge per currency, in minor units, and how many minor
-- units make a major one (2 for USD cents, 0 for JPY).
CREATE TABLE payments.currency (
    code text PRIMARY KEY CHECK (code ~ '^[A-Z]{3}$'),
    minor_unit smallint NOT NULL CHECK (minor_unit BETWEEN 0 AND 3),
    min_amount bigint NOT NULL CHECK (min_amount > 0)
);

INSERT INTO payments.currency (code, minor_unit, min_amount) VALUES
    ('USD', 2, 50), ('EUR', 2, 50), ('GBP', 2, 30), ('CAD', 2, 50), ('AUD', 2, 50),
    ('NZD', 2, 50), ('SGD', 2, 50), ('CHF', 2, 50), ('JPY', 0, 50), ('SEK', 2, 300),
    ('NOK', 2, 300), ('DKK', 2, 250), ('PLN', 2, 200), ('CZK', 2, 1500), ('HKD', 2, 400),
    ('MXN', 2, 1000), ('BRL', 2, 50), ('INR', 2, 50);

-- The single source of truth for the currency: the RPC charges in it and every
-- worker refuses to start when its PAYMENT_CURRENCY differs. Set at deploy with
-- `sqitch deploy --set currency=EUR`.
CREATE TABLE payments.config (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    currency text NOT NULL REFERENCES payments.currency (code),
    queue text NOT NULL CHECK (char_length(queue) > 0 AND char_length(queue) < 128),
    max_attempts smallint NOT NULL DEFAULT 5 CHECK (max_attempts > 0),
    sync_timeout interval NOT NULL DEFAULT '30 seconds' CHECK (sync_timeout > '0'::interval),
    -- libpq connection string create_payment_intent_sync uses to record a
    -- payment in its own transaction; NULL means this server's unix socket as
    -- the function's owner.
    loopback_dsn text
);

INSERT INTO payments.config (currency, queue) VALUES (upper(:'currency'), :'queue');

CREATE TABLE payments.transactions (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    user_id text,
    amount bigint NOT NULL CHECK (amount > 0 AND amount <= 99999999),
    currency text NOT NULL REFERENCES payments.currency (code),
    status text NOT NULL DEFAULT 'pending_intent',
    error_message text,
    provider text NOT NULL DEFAULT 'stripe',
    provider_payment_id text,
    provider_client_secret text,
    description text CHECK (char_length(description) <= 1000),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT status_known CHECK (
        status IN ('pending_intent', 'pending', 'succeeded', 'failed', 'canceled')
    ),
    CONSTRAINT intent_present_once_created CHECK (
        status NOT IN ('pending', 'succeeded')
        OR (provider_payment_id IS NOT NULL AND provider_client_secret IS NOT NULL)
    ),
    CONSTRAINT failure_has_reason CHECK (status <> 'failed' OR error_message IS NOT NULL)
);

CREATE INDEX transactions_user_id_idx ON payments.transactions (user_id, created_at);
CREATE INDEX transactions_status_idx ON payments.transactions (status)
    WHERE status = 'pending_intent';

-- Money fields never change after insert (the worker's idempotency key stands
-- for exactly these parameters), and status only moves forward.
CREATE FUNCTION payments.transactions_guard_update() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF (NEW.id, NEW.user_id, NEW.amount, NEW.currency, NEW.description, NEW.provider, NEW.created_at)
       IS DISTINCT FROM
       (OLD.id, OLD.user_id, OLD.amount, OLD.currency, OLD.description, OLD.provider, OLD.created_at) THEN
        RAISE EXCEPTION 'payment %: id, user, amount, currency, description and provider cannot change', OLD.id;
    END IF;
    IF OLD.provider_payment_id IS NOT NULL
       AND NEW.provider_payment_id IS DISTINCT FROM OLD.provider_payment_id THEN
        RAISE EXCEPTION 'payment % already has PaymentIntent %', OLD.id, OLD.provider_payment_id;
    END IF;
    IF NEW.status <> OLD.status AND NOT (
        (OLD.status = 'pending_intent' AND NEW.status IN ('pending', 'failed', 'canceled')) OR
        (OLD.status = 'pending' AND NEW.status IN ('succeeded', 'failed', 'canceled'))
    ) THEN
        RAISE EXCEPTION 'payment %: status cannot go from % to %', OLD.id, OLD.status, NEW.status;
    END IF;
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER transactions_guard_update
    BEFORE UPDATE ON payments.transactions
    FOR EACH ROW EXECUTE FUNCTION payments.transactions_guard_update();

-- Each payment gets exactly one job, in the same transaction as the payment:
-- they become visible (and the workers are woken) together at commit.
CREATE FUNCTION payments.transactions_enqueue() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    INSERT INTO metadata.river_job (args, kind, max_attempts, queue)
    SELECT jsonb_build_object('payment_id', NEW.id), 'create_payment_intent', c.max_attempts, c.queue
    FROM payments.config AS c;
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_enqueue
    AFTER INSERT ON payments.transactions
    FOR EACH ROW WHEN (NEW.status = 'pending_intent')
    EXECUTE FUNCTION payments.transactions_enqueue();

COMMIT;
