-- Revert payment_worker:payments_security

BEGIN;

DROP POLICY transactions_worker_update ON payments.transactions;
DROP POLICY transactions_worker_read ON payments.transactions;
DROP POLICY transactions_owner_read ON payments.transactions;
ALTER TABLE payments.transactions DISABLE ROW LEVEL SECURITY;

REVOKE ALL ON payments.transactions, payments.config, payments.currency FROM payment_worker, payment_client;
REVOKE ALL ON metadata.river_job FROM payment_worker;
REVOKE ALL ON SCHEMA metadata, payments FROM payment_worker, payment_client;
REVOKE ALL ON ALL FUNCTIONS IN SCHEMA payments FROM payment_client;
REVOKE ALL ON FUNCTION public.create_payment_intent_sync(numeric, text), public.get_payment(uuid)
    FROM payment_client;
GRANT EXECUTE ON FUNCTION public.create_payment_intent_sync(numeric, text), public.get_payment(uuid)
    TO PUBLIC;

-- Another database on this server may still grant them something: then the
-- roles stay, and the revert of that database drops them.
DO $roles$
BEGIN
    DROP ROLE IF EXISTS payment_client;
    DROP ROLE IF EXISTS payment_worker;
EXCEPTION WHEN dependent_objects_still_exist OR insufficient_privilege THEN
    -- (A deployer without CREATEROLE, too: the roles were there before it.)
    RAISE NOTICE 'roles payment_client and payment_worker kept: %', SQLERRM;
END
$roles$;

COMMIT;
