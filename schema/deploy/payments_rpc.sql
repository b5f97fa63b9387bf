-- Deploy payment_worker:payments_rpc
-- requires: payments_schema
-- create_payment_intent_sync(): record a payment, wait for the worker's
-- PaymentIntent, return it.
--
-- The hazard this file exists for: a function's own uncommitted INSERT is
-- invisible to every other session. If the RPC inserted the payment in the
-- caller's transaction and then waited, the worker could never see the row
-- (nor its job) until the RPC gave up. So the payment is recorded through a
-- loopback dblink connection, which commits it - and its job, and the NOTIFY
-- that wakes the workers - on its own, before the caller starts waiting.

BEGIN;

-- Kept where it already is if the database has it; otherwise beside our code.
CREATE EXTENSION IF NOT EXISTS dblink WITH SCHEMA payments;

-- The PostgREST caller: `sub` of the JWT, NULL outside PostgREST.
CREATE FUNCTION payments.current_user_id() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
        nullif(current_setting('request.jwt.claim.sub', true), '')
    )
$$;

-- Raises a clear error for anything the worker or Stripe would refuse.
CREATE FUNCTION payments.payment_validate(amount_cents numeric, description text, currency text)
RETURNS bigint
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_min bigint;
BEGIN
    IF amount_cents IS NULL THEN
        RAISE EXCEPTION 'amount_cents is required' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    IF amount_cents <> trunc(amount_cents) THEN
        RAISE EXCEPTION 'amount_cents must be a whole number of minor units (cents), got %', amount_cents
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT c.min_amount INTO v_min FROM payments.currency AS c WHERE c.code = currency;
    IF v_min IS NULL THEN
        RAISE EXCEPTION 'currency % is not supported', currency USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF amount_cents < v_min OR amount_cents > 99999999 THEN
        RAISE EXCEPTION 'amount_cents must be between % and 99999999 for %, got %', v_min, currency, amount_cents
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF char_length(description) > 1000 THEN
        RAISE EXCEPTION 'description must be at most 1000 characters, got %', char_length(description)
            USING ERRCODE = 'string_data_right_truncation';
    END IF;
    RETURN amount_cents::bigint;
END
$$;

-- The named loopback connection, opened once per session and reused: opening
-- one costs a backend start, which would dominate the RPC's latency.
CREATE FUNCTION payments.loopback_connection() RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name constant text := 'payment_worker_loopback';
    v_dsn text;
BEGIN
    IF v_name = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        RETURN v_name;
    END IF;
    SELECT coalesce(c.loopback_dsn, format(
        'host=%s port=%s dbname=%s user=%s application_name=payment_worker_loopback',
        quote_literal(coalesce(nullif(trim(split_part(current_setting('unix_socket_directories'), ',', 1)), ''),
                               '127.0.0.1')),
        current_setting('port'), quote_literal(current_database()), quote_literal(current_user)))
    INTO v_dsn FROM payments.config AS c;
    BEGIN
        PERFORM dblink_connect(v_name, v_dsn);
    EXCEPTION WHEN OTHERS THEN
        -- SQLERRM is libpq's reason; it never contains the password.
        RAISE EXCEPTION 'cannot record the payment: the loopback connection failed: %', SQLERRM
            USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection',
                  HINT = 'Set payments.config.loopback_dsn to a libpq connection string for this database (README: "Loopback connection").';
    END;
    RETURN v_name;
END
$$;

-- Inserts and commits on the loopback connection. The id is chosen by the
-- caller, so a retry after a broken connection cannot record it twice.
CREATE FUNCTION payments.payment_record(
    p_id uuid, p_user_id text, p_amount bigint, p_currency text, p_description text
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sql constant text := format(
        'INSERT INTO payments.transactions (id, user_id, amount, currency, description) '
        'VALUES (%L, %L, %s, %L, %L) ON CONFLICT (id) DO NOTHING',
        p_id, p_user_id, p_amount, p_currency, p_description);
    v_conn text := payments.loopback_connection();
BEGIN
    PERFORM dblink_exec(v_conn, v_sql);
EXCEPTION WHEN connection_exception THEN
    -- The session's loopback connection died since it was opened (its
    -- backend was terminated, say): open a new one and try once more.
    PERFORM dblink_disconnect(v_conn);
    PERFORM dblink_exec(payments.loopback_connection(), v_sql);
END
$$;

CREATE FUNCTION payments.payment_json(p payments.transactions) RETURNS jsonb
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT jsonb_build_object(
        'payment_id', p.id,
        'client_secret', p.provider_client_secret,
        'amount', round(p.amount::numeric / 10::numeric ^ c.minor_unit, c.minor_unit),
        'currency', p.currency,
        'status', p.status,
        'description', p.description)
    FROM payments.currency AS c WHERE c.code = p.currency
$$;

-- Reads the payment committed by the loopback connection. At READ COMMITTED
-- every statement takes a new snapshot and sees the worker's commit; a caller
-- at REPEATABLE READ or SERIALIZABLE would keep its first snapshot forever, so
-- it reads through the loopback session instead.
CREATE FUNCTION payments.payment_read_committed(p_id uuid) RETURNS payments.transactions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_row payments.transactions;
BEGIN
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT * INTO v_row FROM payments.transactions WHERE id = p_id;
    ELSE
        SELECT * INTO v_row FROM dblink(payments.loopback_connection(),
            format('SELECT * FROM payments.transactions WHERE id = %L', p_id))
            AS t(id uuid, user_id text, amount bigint, currency text, status text,
                 error_message text, provider text, provider_payment_id text,
                 provider_client_secret text, description text,
                 created_at timestamptz, updated_at timestamptz);
    END IF;
    RETURN v_row;
END
$$;

-- Polls the row until the worker has answered. Sleeps 1 ms between reads for
-- the first 100 ms (a healthy worker answers within a few), then backs off to
-- 50 ms so a slow Stripe costs the server almost nothing.
CREATE FUNCTION payments.payment_await(p_id uuid, p_timeout interval) RETURNS payments.transactions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start constant timestamptz := clock_timestamp();
    v_row payments.transactions;
    v_sleep double precision := 0.001;
BEGIN
    LOOP
        v_row := payments.payment_read_committed(p_id);
        IF v_row.status IS DISTINCT FROM 'pending_intent' THEN
            RETURN v_row;
        END IF;
        IF clock_timestamp() - v_start >= p_timeout THEN
            RAISE EXCEPTION 'payment % has no PaymentIntent yet after %', p_id, p_timeout
                USING DETAIL = 'The payment is recorded and the workers will still create its PaymentIntent.',
                      HINT = format('Read it later with SELECT get_payment(%L); check that the workers are running.', p_id);
        END IF;
        PERFORM pg_sleep(v_sleep);
        IF clock_timestamp() - v_start > interval '100 milliseconds' THEN
            v_sleep := least(v_sleep * 1.5, 0.05);
        END IF;
    END LOOP;
END
$$;

CREATE FUNCTION public.create_payment_intent_sync(amount_cents numeric, description text DEFAULT NULL)
RETURNS jsonb
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_config payments.config;
    v_amount bigint;
    v_id constant uuid := gen_random_uuid();
    v_row payments.transactions;
BEGIN
    SELECT * INTO STRICT v_config FROM payments.config;
    v_amount := payments.payment_validate(amount_cents, description, v_config.currency);
    PERFORM payments.payment_record(v_id, payments.current_user_id(), v_amount, v_config.currency, description);
    v_row := payments.payment_await(v_id,
        coalesce(nullif(current_setting('payments.sync_timeout', true), '')::interval, v_config.sync_timeout));
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

-- The functions that call dblink find it on a search_path pinned at deploy
-- time to wherever the extension lives; everything else is schema-qualified.
DO $pin$
DECLARE
    v_schema constant text := (
        SELECT e.extnamespace::regnamespace::text FROM pg_extension AS e WHERE e.extname = 'dblink');
    v_fn text;
BEGIN
    FOREACH v_fn IN ARRAY ARRAY[
        'payments.loopback_connection()',
        'payments.payment_record(uuid, text, bigint, text, text)',
        'payments.payment_read_committed(uuid)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %s, pg_temp', v_fn, v_schema);
    END LOOP;
END
$pin$;

COMMENT ON FUNCTION public.create_payment_intent_sync(numeric, text) IS
    'Records a payment of amount_cents minor units in the configured currency, waits for its Stripe PaymentIntent and returns {payment_id, client_secret, amount, currency, status, description}.';

-- A payment the caller owns (same JWT sub; NULL owner for callers without one).
CREATE FUNCTION public.get_payment(payment_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT payments.payment_json(p) || jsonb_build_object('error_message', p.error_message)
    FROM payments.transactions AS p
    WHERE p.id = get_payment.payment_id
      AND p.user_id IS NOT DISTINCT FROM payments.current_user_id()
$$;

COMMENT ON FUNCTION public.get_payment(uuid) IS
    'The caller''s payment as create_payment_intent_sync returns it, plus error_message; NULL if absent or not the caller''s.';

COMMIT;
