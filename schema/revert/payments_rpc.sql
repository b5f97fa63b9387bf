-- Revert payment_worker:payments_rpc

BEGIN;

DROP FUNCTION public.get_payment(uuid);
DROP FUNCTION public.create_payment_intent_sync(numeric, text);
DROP FUNCTION payments.payment_await(uuid, interval);
DROP FUNCTION payments.payment_read_committed(uuid);
DROP FUNCTION payments.payment_json(payments.transactions);
DROP FUNCTION payments.payment_record(uuid, text, bigint, text, text);
DROP FUNCTION payments.loopback_connection();
DROP FUNCTION payments.payment_validate(numeric, text, text);
DROP FUNCTION payments.current_user_id();

-- Only the dblink this project installed; one found elsewhere stays.
DO $ext$
BEGIN
    IF EXISTS (SELECT 1 FROM pg_extension WHERE extname = 'dblink'
               AND extnamespace = 'payments'::regnamespace) THEN
        DROP EXTENSION dblink;
    END IF;
END
$ext$;

COMMIT;
