-- Revert payment_worker:payment_lifecycle
-- Back to what stripe_events left: the five statuses (processing and
-- requires_capture were Stripe's words for what was `pending` then), the
-- loopback_writer guard and get_payment, no sync_payment jobs.

BEGIN;

REVOKE ALL ON FUNCTION payments.stripe_event_record(jsonb, text) FROM payment_worker;

DELETE FROM payments.job_kind WHERE kind IN ('apply_stripe_event', 'sync_payment');
DELETE FROM metadata.river_job
WHERE kind = 'sync_payment' AND queue = (SELECT c.queue FROM payments.config AS c);

DROP FUNCTION payments.resync(uuid);
DROP FUNCTION payments.payment_open_counts();
DROP FUNCTION payments.stripe_event_unapplied();
DROP FUNCTION payments.stripe_event_newest_created();
DROP FUNCTION payments.payment_reconcile_enqueue(float8, integer, float8);
DROP FUNCTION payments.job_lifecycle_ignore(bigint, integer, uuid, text);
DROP FUNCTION payments.job_payment_observe(bigint, integer, uuid, timestamptz, jsonb);
DROP FUNCTION payments.job_event_finish(text, jsonb, text, text);
DROP FUNCTION payments.job_lifecycle_get(bigint, integer, uuid);
DROP FUNCTION payments.observation_token();
DROP FUNCTION payments.apply_stripe_event_given_up(bigint, jsonb, text);
DROP FUNCTION payments.sync_enqueue(uuid, float8);
DROP FUNCTION payments.job_lifecycle_payment_id(text, jsonb);

DROP TRIGGER transactions_notify_status ON payments.transactions;
DROP FUNCTION payments.transactions_notify_status();

-- The old guard knows no requires_capture -> pending: the mapping bypasses it.
ALTER TABLE payments.transactions DROP CONSTRAINT status_matches_provider;
ALTER TABLE payments.transactions DISABLE TRIGGER transactions_guard_update;
UPDATE payments.transactions SET status = 'pending' WHERE status IN ('processing', 'requires_capture');
ALTER TABLE payments.transactions ENABLE TRIGGER transactions_guard_update;

DROP INDEX payments.transactions_open_idx;
ALTER TABLE payments.transactions
    DROP CONSTRAINT status_known,
    DROP CONSTRAINT intent_present_once_created,
    DROP COLUMN provider_status,
    DROP COLUMN last_payment_error_message,
    DROP COLUMN last_payment_error_code,
    DROP COLUMN last_payment_error_decline_code,
    DROP COLUMN amount_received,
    DROP COLUMN provider_synced_at,
    ADD CONSTRAINT status_known CHECK (
        status IN ('pending_intent', 'pending', 'succeeded', 'failed', 'canceled')
    ),
    ADD CONSTRAINT intent_present_once_created CHECK (
        status NOT IN ('pending', 'succeeded')
        OR (provider_payment_id IS NOT NULL AND provider_client_secret IS NOT NULL)
    );

-- As loopback_writer made them.
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

-- As worker_api made it.
CREATE OR REPLACE FUNCTION payments.job_complete_with_intent(
    p_job_id bigint, p_attempt integer, p_lease uuid, p_provider_payment_id text, p_client_secret text
) RETURNS TABLE (completed boolean, latency_seconds float8)
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
DECLARE
    v_latency float8;
BEGIN
    PERFORM payments.require(char_length(p_provider_payment_id) BETWEEN 1 AND 255,
                             'provider_payment_id must be 1 to 255 characters');
    PERFORM payments.require(char_length(p_client_secret) BETWEEN 1 AND 255,
                             'client_secret must be 1 to 255 characters');
    IF NOT payments.job_release(p_job_id, p_attempt, p_lease) THEN
        RETURN QUERY SELECT false, NULL::float8;
        RETURN;
    END IF;
    UPDATE payments.transactions AS p
    SET status = 'pending',
        provider_payment_id = p_provider_payment_id,
        provider_client_secret = p_client_secret
    FROM metadata.river_job AS j
    WHERE j.id = p_job_id
      AND p.id = payments.job_payment_id(j.kind, j.args)
      AND p.status = 'pending_intent'
    RETURNING extract(epoch FROM clock_timestamp() - p.created_at)::float8 INTO v_latency;
    UPDATE metadata.river_job SET state = 'completed', finalized_at = now() WHERE id = p_job_id;
    RETURN QUERY SELECT true, v_latency;
END
$$;

DROP FUNCTION payments.status_transition_allowed(text, text);
DROP FUNCTION payments.status_of_stripe(text);

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

COMMIT;
