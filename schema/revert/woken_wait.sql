-- Revert payment_worker:woken_wait
-- The RPCs poll the row again (their definitions of payments_rpc and
-- payment_operations); the woken functions go. Workers of this version need them.

BEGIN;

CREATE OR REPLACE FUNCTION payments.payment_await(p_id uuid, p_timeout interval) RETURNS payments.transactions
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

CREATE OR REPLACE FUNCTION payments.request_await(p_kind text, p_id uuid, p_what text, p_timeout interval) RETURNS jsonb
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_start constant timestamptz := clock_timestamp();
    v_row jsonb;
    v_sleep double precision := 0.001;
BEGIN
    LOOP
        v_row := payments.request_read_committed(p_kind, p_id);
        IF v_row ->> 'status' NOT IN ('requested', 'pending_refund') THEN
            RETURN v_row;
        END IF;
        IF clock_timestamp() - v_start >= p_timeout THEN
            RAISE EXCEPTION '% of payment % (request %) is not answered after %', p_what, v_row ->> 'payment_id', p_id, p_timeout
                USING DETAIL = 'The request is recorded and the workers will still carry it out.',
                      HINT = format('Read its outcome later with SELECT get_payment(%L); check that the workers are running.',
                                    v_row ->> 'payment_id');
        END IF;
        PERFORM pg_sleep(v_sleep);
        IF clock_timestamp() - v_start > interval '100 milliseconds' THEN
            v_sleep := least(v_sleep * 1.5, 0.05);
        END IF;
    END LOOP;
END
$$;

DROP FUNCTION payments.wait_for_worker(integer);
DROP FUNCTION payments.job_wake(bigint[]);
DROP FUNCTION payments.job_claim_woken(integer, text);
DROP FUNCTION payments.job_wait_id(jsonb);
DROP FUNCTION payments.wait_key(uuid);
DROP FUNCTION payments.wait_class();

COMMIT;
