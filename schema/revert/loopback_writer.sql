-- Revert payment_worker:loopback_writer
-- Back to v0.1.0's loopback (as the functions' owner, DSN in payments.config)
-- and JWT-sub identities. Payments recorded meanwhile keep their rows; their
-- owner_role is dropped with the column.

BEGIN;

-- The loopback login: dropped only if this deploy created it. A database
-- cloned from this one still grants it something; then it stays.
DO $writer$
DECLARE
    v_loopback payments.loopback;
BEGIN
    SELECT * INTO STRICT v_loopback FROM payments.loopback;
    EXECUTE format('REVOKE ALL ON SCHEMA payments FROM %I', v_loopback.role_name);
    DROP FUNCTION payments.writer_payment_record(uuid, text, text, bigint, text, text, text);
    DROP FUNCTION payments.writer_payment_get(uuid, text);
    IF v_loopback.role_created THEN
        BEGIN
            EXECUTE format('REVOKE CONNECT ON DATABASE %I FROM %I', current_database(), v_loopback.role_name);
            EXECUTE format('DROP ROLE %I', v_loopback.role_name);
        EXCEPTION WHEN dependent_objects_still_exist THEN
            RAISE NOTICE 'role % kept: %', v_loopback.role_name, SQLERRM;
        END;
    END IF;
END
$writer$;

CREATE OR REPLACE FUNCTION payments.transactions_guard_update() RETURNS trigger
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

ALTER TABLE payments.config ADD COLUMN loopback_dsn text;

CREATE FUNCTION payments.current_user_id() RETURNS text
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(
        nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub',
        nullif(current_setting('request.jwt.claim.sub', true), '')
    )
$$;

CREATE OR REPLACE FUNCTION payments.loopback_connection() RETURNS text
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

DROP FUNCTION payments.payment_record(uuid, text, text, bigint, text, text);
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
    PERFORM dblink_disconnect(v_conn);
    PERFORM dblink_exec(payments.loopback_connection(), v_sql);
END
$$;

DROP POLICY transactions_owner_read ON payments.transactions;
ALTER TABLE payments.transactions DROP COLUMN owner_role;

CREATE OR REPLACE FUNCTION payments.payment_read_committed(p_id uuid) RETURNS payments.transactions
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

CREATE OR REPLACE FUNCTION public.create_payment_intent_sync(amount_cents numeric, description text DEFAULT NULL)
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

CREATE OR REPLACE FUNCTION public.get_payment(payment_id uuid) RETURNS jsonb
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT payments.payment_json(p) || jsonb_build_object('error_message', p.error_message)
    FROM payments.transactions AS p
    WHERE p.id = get_payment.payment_id
      AND p.user_id IS NOT DISTINCT FROM payments.current_user_id()
$$;

CREATE POLICY transactions_owner_read ON payments.transactions
    FOR SELECT TO payment_client
    USING (user_id = payments.current_user_id());

CREATE OR REPLACE FUNCTION payments.payment_json(p payments.transactions) RETURNS jsonb
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

DROP FUNCTION payments.sync_timeout_for_session(payments.config);
DROP FUNCTION payments.caller_owns(text, text);
DROP FUNCTION payments.caller_user_id();
DROP FUNCTION payments.loopback_ticket_check(text, text);
DROP FUNCTION payments.loopback_ticket(text);
DROP FUNCTION payments.payment_record_message(uuid, text, text, bigint, text, text);
DROP FUNCTION payments.conninfo_quote(text);
DROP TABLE payments.loopback;
ALTER TABLE payments.config DROP COLUMN authenticator_roles, DROP COLUMN max_sync_timeout;

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

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;
GRANT EXECUTE ON FUNCTION payments.current_user_id() TO payment_client;

COMMIT;
