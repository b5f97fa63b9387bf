-- Verify payment_worker:loopback_writer
-- Fails (division by zero) when the security model cannot hold.

BEGIN;

-- No dblink function, wherever dblink lives, is executable by PUBLIC.
SELECT 1 / (NOT EXISTS (
    SELECT 1 FROM pg_depend AS d JOIN pg_extension AS e ON d.refobjid = e.oid
    WHERE e.extname = 'dblink' AND d.refclassid = 'pg_extension'::regclass
      AND d.classid = 'pg_proc'::regclass AND d.deptype = 'e'
      AND has_function_privilege('public', d.objid, 'EXECUTE')))::int;
-- Nobody but the owners may create functions that shadow the RPCs.
SELECT 1 / (NOT has_schema_privilege('public', 'public', 'CREATE'))::int;
-- The loopback login exists, is no superuser, has a connection limit.
SELECT 1 / count(*) FROM payments.loopback AS l JOIN pg_roles AS r ON r.rolname = l.role_name
WHERE NOT r.rolsuper AND r.rolconnlimit > 0 AND r.rolcanlogin AND NOT r.rolbypassrls;
-- Its secrets are the owner's alone; nothing in schema payments is PUBLIC's.
SELECT 1 / (NOT has_table_privilege('payment_client', 'payments.loopback', 'SELECT'))::int;
SELECT 1 / (NOT has_table_privilege('payment_worker', 'payments.loopback', 'SELECT'))::int;
SELECT 1 / (NOT EXISTS (
    SELECT 1 FROM pg_proc WHERE pronamespace = 'payments'::regnamespace
      AND has_function_privilege('public', oid, 'EXECUTE')))::int;
SELECT authenticator_roles, max_sync_timeout FROM payments.config WHERE false;
SELECT owner_role FROM payments.transactions WHERE false;

ROLLBACK;
