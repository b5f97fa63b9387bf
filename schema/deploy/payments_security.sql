-- Deploy payment_worker:payments_security
-- requires: payments_rpc
-- Roles and grants (README: "Roles and grants").
--   payment_client: what a PostgREST role or app user needs - the two RPCs and
--                   a read of its own payments (row-level security by JWT sub).
--   payment_worker: what the worker needs - claim and finish jobs, store the
--                   PaymentIntent on a payment; nothing else.
-- Both are NOLOGIN groups: grant them to login roles. Roles are cluster-wide,
-- so a second database deployed on the same server reuses them.

BEGIN;

DO $roles$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payment_client') THEN
        CREATE ROLE payment_client NOLOGIN;
    END IF;
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'payment_worker') THEN
        CREATE ROLE payment_worker NOLOGIN;
    END IF;
END
$roles$;

REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM PUBLIC;
REVOKE ALL ON FUNCTION public.create_payment_intent_sync(numeric, text) FROM PUBLIC;
REVOKE ALL ON FUNCTION public.get_payment(uuid) FROM PUBLIC;

GRANT EXECUTE ON FUNCTION public.create_payment_intent_sync(numeric, text) TO payment_client;
GRANT EXECUTE ON FUNCTION public.get_payment(uuid) TO payment_client;
GRANT USAGE ON SCHEMA payments TO payment_client;
GRANT EXECUTE ON FUNCTION payments.current_user_id() TO payment_client;
GRANT SELECT ON payments.transactions TO payment_client;

GRANT USAGE ON SCHEMA metadata, payments TO payment_worker;
GRANT SELECT, UPDATE ON metadata.river_job TO payment_worker;
GRANT SELECT ON payments.config, payments.currency TO payment_worker;
GRANT SELECT, UPDATE (status, error_message, provider_payment_id, provider_client_secret)
    ON payments.transactions TO payment_worker;

ALTER TABLE payments.transactions ENABLE ROW LEVEL SECURITY;

CREATE POLICY transactions_owner_read ON payments.transactions
    FOR SELECT TO payment_client
    USING (user_id = payments.current_user_id());

CREATE POLICY transactions_worker_read ON payments.transactions
    FOR SELECT TO payment_worker USING (true);

CREATE POLICY transactions_worker_update ON payments.transactions
    FOR UPDATE TO payment_worker USING (true) WITH CHECK (true);

COMMIT;
