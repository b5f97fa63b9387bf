-- Deploy payment_worker:river_insert_notify
-- requires: river_schema
-- Any insert of an available job wakes listening workers, whichever client
-- inserted it (SQL, River's Go client, the riverqueue Python client). River's
-- own client notifies on `<schema>.river_insert` with `{"queue": "<name>"}`;
-- we send the same, so both kinds of listener understand either.
--
-- Statement-level with a transition table: one notification per queue per
-- statement however many rows it inserts. PostgreSQL also folds identical
-- notifications within a transaction, and delivers them only at commit, so a
-- worker woken by one always sees the committed job.

BEGIN;

CREATE FUNCTION metadata.river_job_notify_insert() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM pg_notify(TG_TABLE_SCHEMA || '.river_insert', jsonb_build_object('queue', queue)::text)
    FROM (SELECT DISTINCT queue FROM inserted WHERE state = 'available') AS q;
    RETURN NULL;
END
$$;

CREATE TRIGGER river_job_notify_insert
    AFTER INSERT ON metadata.river_job
    REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION metadata.river_job_notify_insert();

COMMIT;
