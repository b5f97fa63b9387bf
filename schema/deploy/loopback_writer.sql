-- Deploy payment_worker:loopback_writer
-- requires: payments_security
-- The RPC's loopback connection runs as a login of its own that can do nothing
-- but record payments the RPC vouched for; callers are identified by what they
-- cannot forge; what a caller controls is capped. README: "Security model".
--
-- The hazards this file exists for:
-- * The named dblink connection lives in the caller's session. Anyone there who
--   can execute dblink's functions can send it any SQL. It used to be opened as
--   the functions' owner (a superuser): one RPC call and a client could
--   `ALTER ROLE me SUPERUSER` through it. Now it is opened as
--   payments_writer_<database>, whose only privilege is two functions that
--   check an HMAC "ticket" only the RPC can compute: a hijacked connection is
--   worth no more than calling the RPC. And the deploy refuses outright when
--   PUBLIC may execute dblink's functions, wherever dblink lives.
-- * request.jwt.claims is an ordinary setting: any direct login can SET it.
--   It is trusted only when session_user (which SET ROLE and SECURITY DEFINER
--   do not change) is a configured PostgREST authenticator.
-- * Superuser backends may use superuser_reserved_connections. The writer is
--   not a superuser, has a CONNECTION LIMIT and closes when idle, so callers
--   cannot lock everyone else out through it.

BEGIN;

-- Refuse to deploy where the model cannot hold. Checked again by verify.
DO $preflight$
DECLARE
    v_schema text;
BEGIN
    SELECT e.extnamespace::regnamespace::text INTO v_schema
    FROM pg_extension AS e
    WHERE e.extname = 'dblink'
      AND EXISTS (
          SELECT 1 FROM pg_depend AS d
          WHERE d.refclassid = 'pg_extension'::regclass AND d.refobjid = e.oid
            AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
            AND has_function_privilege('public', d.objid, 'EXECUTE'));
    IF v_schema IS NOT NULL THEN
        RAISE EXCEPTION 'dblink''s functions (schema %) are executable by PUBLIC: any login could use the RPC''s loopback connection', v_schema
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'As the owner of dblink, REVOKE EXECUTE on each of its functions FROM PUBLIC, then deploy again (README: "Security model" has the statement).';
    END IF;
    IF has_schema_privilege('public', 'public', 'CREATE') THEN
        RAISE EXCEPTION 'PUBLIC may CREATE in schema public: another role could shadow create_payment_intent_sync and get_payment'
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'REVOKE CREATE ON SCHEMA public FROM PUBLIC; then deploy again (the default since PostgreSQL 15).';
    END IF;
END
$preflight$;

-- --- who owns a payment ------------------------------------------------------------

ALTER TABLE payments.config
    -- Logins whose request.jwt.claims are trusted: PostgREST's authenticator.
    ADD COLUMN authenticator_roles text[] NOT NULL DEFAULT '{authenticator}',
    -- The longest wait a session may ask for with SET payments.sync_timeout.
    ADD COLUMN max_sync_timeout interval NOT NULL DEFAULT '30 seconds'
        CHECK (max_sync_timeout > '0'::interval),
    DROP COLUMN loopback_dsn;

-- The login role that created the payment; user_id is the JWT sub when that
-- login is an authenticator, NULL otherwise. Together they name the owner.
ALTER TABLE payments.transactions ADD COLUMN owner_role text;

-- Payments recorded before this change: with a sub they came through PostgREST
-- (owned by the first authenticator); without one they had a shared NULL owner
-- and stay readable by nobody but the administrator.
UPDATE payments.transactions AS p SET owner_role = c.authenticator_roles[1]
FROM payments.config AS c WHERE p.user_id IS NOT NULL;

CREATE FUNCTION payments.caller_user_id() RETURNS text
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT CASE WHEN session_user::text = ANY (c.authenticator_roles)
                    THEN nullif(nullif(current_setting('request.jwt.claims', true), '')::jsonb ->> 'sub', '')
               END
        FROM payments.config AS c
    );
END
$$;

CREATE FUNCTION payments.caller_owns(p_owner_role text, p_user_id text) RETURNS boolean
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT coalesce(p_owner_role = session_user::text
            AND CASE WHEN session_user::text = ANY (c.authenticator_roles)
                     THEN p_user_id = payments.caller_user_id()
                     ELSE p_user_id IS NULL
                END, false)
        FROM payments.config AS c
    );
END
$$;

DROP POLICY transactions_owner_read ON payments.transactions;
REVOKE EXECUTE ON FUNCTION payments.current_user_id() FROM payment_client;
DROP FUNCTION payments.current_user_id();

CREATE POLICY transactions_owner_read ON payments.transactions
    FOR SELECT TO payment_client
    USING (payments.caller_owns(owner_role, user_id));

-- Owner and client secret join the fields that never change.
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

-- --- the loopback login --------------------------------------------------------------

-- Readable by the functions' owner alone (no grant to anyone): the login's
-- password and the key of the RPC's tickets, both made here at deploy.
CREATE TABLE payments.loopback (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    role_name text NOT NULL,
    -- Whether this deploy created the role (then the revert drops it).
    role_created boolean NOT NULL,
    password text NOT NULL,
    -- Where the loopback connects: NULL host means the address the caller
    -- reached this server on, or 127.0.0.1 for a unix-socket caller; NULL port
    -- this server's. Set both where that is not this server (a proxy in front).
    host text,
    port integer CHECK (port BETWEEN 1 AND 65535),
    -- HMAC-SHA256 of the tickets, its key already XORed with ipad and opad.
    ticket_ipad bytea NOT NULL CHECK (octet_length(ticket_ipad) = 64),
    ticket_opad bytea NOT NULL CHECK (octet_length(ticket_opad) = 64)
);
REVOKE ALL ON payments.loopback FROM PUBLIC;

SET LOCAL payment_worker.deploy_loopback_connections = :'loopback_connections';

DO $writer$
DECLARE
    v_db constant text := current_database();
    v_role constant text := CASE
        WHEN octet_length('payments_writer_' || v_db) <= 63 THEN 'payments_writer_' || v_db
        ELSE 'payments_writer_' || left(md5(v_db), 16) END;
    v_marker constant text := format('payment-worker loopback login of database %s', v_db);
    v_limit constant integer := current_setting('payment_worker.deploy_loopback_connections')::integer;
    -- gen_random_uuid() draws from the server's strong random source.
    v_password constant text := replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', '');
    v_key constant bytea := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex')
        || decode(repeat('00', 32), 'hex');
    v_oid oid;
    v_created boolean := false;
BEGIN
    IF v_limit < 1 THEN
        RAISE EXCEPTION 'loopback_connections must be at least 1, got %', v_limit;
    END IF;
    SELECT oid INTO v_oid FROM pg_roles WHERE rolname = v_role;
    IF v_oid IS NULL THEN
        BEGIN
            EXECUTE format('CREATE ROLE %I LOGIN NOINHERIT', v_role);
        EXCEPTION WHEN insufficient_privilege THEN
            RAISE EXCEPTION 'cannot create the loopback login %: %', v_role, SQLERRM
                USING ERRCODE = 'insufficient_privilege',
                      HINT = 'The deployer needs CREATEROLE, or to be a superuser (README: "Security model").';
        END;
        v_created := true;
    ELSIF shobj_description(v_oid, 'pg_authid') IS DISTINCT FROM v_marker
          AND shobj_description(v_oid, 'pg_authid') LIKE 'payment-worker loopback login of database %' THEN
        RAISE EXCEPTION 'role % is already the loopback login of another database', v_role
            USING HINT = 'Rename or drop it, or deploy into a database of another name.';
    ELSIF EXISTS (SELECT 1 FROM pg_auth_members WHERE member = v_oid) THEN
        RAISE EXCEPTION 'role % exists and is a member of other roles: refusing to use it as the loopback login', v_role;
    END IF;
    -- Whoever created it, it gets exactly these attributes. A deployer that is
    -- no superuser (CREATEROLE is enough here) cannot change the superuser-only
    -- ones, so it refuses a role that has them instead.
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        EXECUTE format('ALTER ROLE %I NOSUPERUSER NOREPLICATION NOBYPASSRLS', v_role);
    ELSIF EXISTS (SELECT 1 FROM pg_roles WHERE rolname = v_role
                  AND (rolsuper OR rolreplication OR rolbypassrls)) THEN
        RAISE EXCEPTION 'role % is a superuser or may bypass RLS or replicate: refusing to use it as the loopback login', v_role;
    END IF;
    BEGIN
        EXECUTE format('ALTER ROLE %I LOGIN NOCREATEDB NOCREATEROLE NOINHERIT CONNECTION LIMIT %s',
                       v_role, v_limit);
        EXECUTE format('ALTER ROLE %I PASSWORD %L', v_role, v_password);
    EXCEPTION WHEN insufficient_privilege THEN
        -- Raised anew so that no error context quotes the statement, password and all.
        RAISE EXCEPTION 'cannot set up the loopback login %: %', v_role, SQLERRM
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'The deployer needs CREATEROLE, or to be a superuser (README: "Security model").';
    END;
    -- An idle loopback closes (the RPC reopens it on its next call), so its
    -- slots return to the pool; nothing it runs can take long.
    EXECUTE format('ALTER ROLE %I SET idle_session_timeout = %L', v_role, '60s');
    EXECUTE format('ALTER ROLE %I SET idle_in_transaction_session_timeout = %L', v_role, '10s');
    EXECUTE format('ALTER ROLE %I SET statement_timeout = %L', v_role, '10s');
    EXECUTE format('COMMENT ON ROLE %I IS %L', v_role, v_marker);
    IF NOT has_database_privilege(v_role, v_db, 'CONNECT') THEN
        EXECUTE format('GRANT CONNECT ON DATABASE %I TO %I', v_db, v_role);
    END IF;
    EXECUTE format('GRANT USAGE ON SCHEMA payments TO %I', v_role);
    INSERT INTO payments.loopback (role_name, role_created, password, ticket_ipad, ticket_opad)
    SELECT v_role, v_created, v_password,
           decode(string_agg(lpad(to_hex(get_byte(v_key, i) # 54), 2, '0'), '' ORDER BY i), 'hex'),
           decode(string_agg(lpad(to_hex(get_byte(v_key, i) # 92), 2, '0'), '' ORDER BY i), 'hex')
    FROM generate_series(0, 63) AS i;
END
$writer$;

-- A ticket: HMAC-SHA256 of a canonical text of what the RPC asks the loopback
-- to do, under a key only the functions' owner can read.
CREATE FUNCTION payments.loopback_ticket(p_message text) RETURNS text
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT encode(sha256(l.ticket_opad || sha256(l.ticket_ipad || convert_to(p_message, 'UTF8'))), 'hex')
        FROM payments.loopback AS l
    );
END
$$;

CREATE FUNCTION payments.loopback_ticket_check(p_message text, p_ticket text) RETURNS void
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ticket IS NULL OR p_ticket IS DISTINCT FROM payments.loopback_ticket(p_message) THEN
        RAISE EXCEPTION 'only create_payment_intent_sync may record or read payments through the loopback'
            USING ERRCODE = 'insufficient_privilege';
    END IF;
END
$$;

CREATE FUNCTION payments.payment_record_message(
    p_id uuid, p_owner_role text, p_user_id text, p_amount bigint, p_currency text, p_description text
) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_array('record', p_id, p_owner_role, p_user_id, p_amount, p_currency, p_description)::text
    );
END
$$;

-- What the loopback login may do: the first records a payment, the second
-- reads one back (for callers at REPEATABLE READ or SERIALIZABLE).
CREATE FUNCTION payments.writer_payment_record(
    p_id uuid, p_owner_role text, p_user_id text, p_amount bigint, p_currency text,
    p_description text, p_ticket text
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.loopback_ticket_check(
        payments.payment_record_message(p_id, p_owner_role, p_user_id, p_amount, p_currency, p_description),
        p_ticket);
    INSERT INTO payments.transactions (id, owner_role, user_id, amount, currency, description)
    VALUES (p_id, p_owner_role, p_user_id, p_amount, p_currency, p_description)
    ON CONFLICT (id) DO NOTHING;
    RETURN FOUND;
END
$$;

CREATE FUNCTION payments.writer_payment_get(p_id uuid, p_ticket text) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM payments.loopback_ticket_check(jsonb_build_array('read', p_id)::text, p_ticket);
    RETURN (SELECT to_jsonb(p) FROM payments.transactions AS p WHERE p.id = p_id);
END
$$;

-- A libpq connection-string value, quoted.
CREATE FUNCTION payments.conninfo_quote(p_value text) RETURNS text
LANGUAGE plpgsql IMMUTABLE STRICT SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT '''' || replace(replace(p_value, '\', '\\'), '''', '\''') || ''''
    );
END
$$;

-- The named loopback connection, opened once per session and reused: opening
-- one costs a backend start, which would dominate the RPC's latency.
CREATE OR REPLACE FUNCTION payments.loopback_connection() RETURNS text
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_name constant text := 'payment_worker_loopback';
    v_loopback payments.loopback;
    v_detail text;
BEGIN
    IF v_name = ANY (coalesce(dblink_get_connections(), '{}')) THEN
        RETURN v_name;
    END IF;
    SELECT * INTO STRICT v_loopback FROM payments.loopback;
    BEGIN
        PERFORM dblink_connect(v_name, format(
            'host=%s port=%s dbname=%s user=%s password=%s connect_timeout=5 application_name=payment_worker_loopback',
            payments.conninfo_quote(coalesce(v_loopback.host, host(inet_server_addr()), '127.0.0.1')),
            coalesce(v_loopback.port, current_setting('port')::integer),
            payments.conninfo_quote(current_database()),
            payments.conninfo_quote(v_loopback.role_name),
            payments.conninfo_quote(v_loopback.password)));
    EXCEPTION WHEN OTHERS THEN
        -- libpq's reason (in SQLERRM or the detail) never contains the password.
        GET STACKED DIAGNOSTICS v_detail = PG_EXCEPTION_DETAIL;
        v_detail := coalesce(nullif(v_detail, ''), SQLERRM);
        IF v_detail LIKE '%too many connections for role%' THEN
            RAISE EXCEPTION 'cannot record the payment: all % loopback connections are in use',
                (SELECT rolconnlimit FROM pg_roles WHERE rolname = v_loopback.role_name)
                USING ERRCODE = 'too_many_connections',
                      HINT = format('Try again shortly: an idle loopback closes after 60 s. An operator may raise the limit: ALTER ROLE %I CONNECTION LIMIT n.', v_loopback.role_name);
        ELSIF v_detail LIKE '%too many clients%' OR v_detail LIKE '%remaining connection slots%' THEN
            RAISE EXCEPTION 'cannot record the payment: the database server has no free connection'
                USING ERRCODE = 'too_many_connections', HINT = 'Try again shortly.';
        END IF;
        RAISE EXCEPTION 'cannot record the payment: the loopback connection failed: %', v_detail
            USING ERRCODE = 'sqlclient_unable_to_establish_sqlconnection',
                  HINT = 'Check payments.loopback (host, port) and that the server accepts its login with a password (README: "Security model").';
    END;
    RETURN v_name;
END
$$;

-- Records and commits on the loopback connection. The id is chosen by the
-- caller, so a retry after a broken connection cannot record it twice.
DROP FUNCTION payments.payment_record(uuid, text, bigint, text, text);
CREATE FUNCTION payments.payment_record(
    p_id uuid, p_owner_role text, p_user_id text, p_amount bigint, p_currency text, p_description text
) RETURNS void
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_sql constant text := format(
        'SELECT payments.writer_payment_record(%L, %L, %L, %s, %L, %L, %L)',
        p_id, p_owner_role, p_user_id, p_amount, p_currency, p_description,
        payments.loopback_ticket(payments.payment_record_message(
            p_id, p_owner_role, p_user_id, p_amount, p_currency, p_description)));
    v_conn text := payments.loopback_connection();
BEGIN
    PERFORM FROM dblink(v_conn, v_sql) AS t(recorded boolean);
EXCEPTION WHEN connection_exception THEN
    -- The session's loopback connection died since it was opened (its
    -- backend was terminated, or closed when idle): open a new one, once.
    PERFORM dblink_disconnect(v_conn);
    PERFORM FROM dblink(payments.loopback_connection(), v_sql) AS t(recorded boolean);
END
$$;

-- At READ COMMITTED every statement takes a new snapshot and sees the worker's
-- commit; a caller at REPEATABLE READ or SERIALIZABLE keeps its first snapshot
-- forever, so it reads through the loopback session instead.
CREATE OR REPLACE FUNCTION payments.payment_read_committed(p_id uuid) RETURNS payments.transactions
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_row payments.transactions;
    v_json jsonb;
BEGIN
    IF current_setting('transaction_isolation') = 'read committed' THEN
        SELECT * INTO v_row FROM payments.transactions WHERE id = p_id;
    ELSE
        SELECT t.j INTO v_json FROM dblink(payments.loopback_connection(), format(
            'SELECT payments.writer_payment_get(%L, %L)',
            p_id, payments.loopback_ticket(jsonb_build_array('read', p_id)::text))) AS t(j jsonb);
        v_row := jsonb_populate_record(NULL::payments.transactions, v_json);
    END IF;
    RETURN v_row;
END
$$;

-- PL/pgSQL rather than SQL, here and in every function on the RPC's and the
-- workers' paths: PostgreSQL plans a non-inlined SQL function's body anew on
-- every call (a function with SET search_path is never inlined), while
-- PL/pgSQL keeps its plans for the session.
CREATE OR REPLACE FUNCTION payments.payment_json(p payments.transactions) RETURNS jsonb
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT jsonb_build_object(
            'payment_id', p.id,
            'client_secret', p.provider_client_secret,
            'amount', round(p.amount::numeric / 10::numeric ^ c.minor_unit, c.minor_unit),
            'currency', p.currency,
            'status', p.status,
            'description', p.description)
        FROM payments.currency AS c WHERE c.code = p.currency
    );
END
$$;

-- What a session may ask for with SET payments.sync_timeout, within the cap.
CREATE FUNCTION payments.sync_timeout_for_session(p_config payments.config) RETURNS interval
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_raw constant text := nullif(current_setting('payments.sync_timeout', true), '');
    v_asked interval;
BEGIN
    IF v_raw IS NULL THEN
        RETURN least(p_config.sync_timeout, p_config.max_sync_timeout);
    END IF;
    BEGIN
        v_asked := v_raw::interval;
    EXCEPTION WHEN data_exception THEN
        RAISE EXCEPTION 'payments.sync_timeout must be an interval such as ''5 s'', got %', quote_literal(v_raw)
            USING ERRCODE = 'invalid_parameter_value';
    END;
    IF v_asked <= '0'::interval THEN
        RAISE EXCEPTION 'payments.sync_timeout must be positive, got %', v_raw
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN least(v_asked, p_config.max_sync_timeout);
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

CREATE OR REPLACE FUNCTION public.get_payment(payment_id uuid) RETURNS jsonb
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT payments.payment_json(p) || jsonb_build_object('error_message', p.error_message)
        FROM payments.transactions AS p
        WHERE p.id = get_payment.payment_id
          AND payments.caller_owns(p.owner_role, p.user_id)
    );
END
$$;

COMMENT ON FUNCTION public.get_payment(uuid) IS
    'The caller''s payment as create_payment_intent_sync returns it, plus error_message; NULL if absent or not the caller''s.';

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
        'payments.payment_record(uuid, text, text, bigint, text, text)',
        'payments.payment_read_committed(uuid)'
    ] LOOP
        EXECUTE format('ALTER FUNCTION %s SET search_path = pg_catalog, %s, pg_temp', v_fn, v_schema);
    END LOOP;
END
$pin$;

-- Grants: nothing in schema payments for PUBLIC; the loopback login gets its
-- two functions; the client role the ownership check its RLS policy calls.
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;
DO $grants$
DECLARE
    v_role constant text := (SELECT role_name FROM payments.loopback);
BEGIN
    EXECUTE format('GRANT EXECUTE ON FUNCTION payments.writer_payment_record(uuid, text, text, bigint, text, text, text),'
                   ' payments.writer_payment_get(uuid, text) TO %I', v_role);
END
$grants$;
GRANT EXECUTE ON FUNCTION payments.caller_owns(text, text), payments.caller_user_id() TO payment_client;

COMMIT;
