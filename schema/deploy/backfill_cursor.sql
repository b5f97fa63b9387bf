-- Deploy payment_worker:backfill_cursor
-- requires: payment_lifecycle
-- Where the backfill stands in Stripe's event list, in a table rather than the
-- leader's memory: a new leader (restart, failover) carries on from it instead
-- of from the newest event we hold, which would skip what the receiver missed
-- before that event.
--
-- One row per queue, written only by the functions below, and by those only
-- for the session that holds payments.worker_leader: a stale leader, or any
-- other worker session, cannot move the position.

BEGIN;

CREATE TABLE payments.backfill_cursor (
    queue text PRIMARY KEY,
    -- When the last pass that read the list to its end began: every event
    -- Stripe had created by then (less clock skew) has been recorded.
    covered_at timestamptz,
    -- A pass cut by max_pages: its created[gte], the last event it read (the
    -- next page's starting_after) and when it began (covered_at once finished).
    resume_created_gte bigint,
    resume_starting_after text,
    resume_started_at timestamptz,
    updated_at timestamptz NOT NULL,
    -- The leader_id of the leader that wrote it, for whoever investigates.
    updated_by text NOT NULL,
    CONSTRAINT resume_whole CHECK (
        (resume_created_gte IS NULL) = (resume_starting_after IS NULL)
        AND (resume_created_gte IS NULL) = (resume_started_at IS NULL)
    ),
    CONSTRAINT resume_starting_after_length CHECK (char_length(resume_starting_after) BETWEEN 1 AND 255)
);

-- --- internal helper (no grants) -----------------------------------------------------------

-- The caller's session holds the leadership, unexpired: returns its leader_id,
-- else raises. The leader row is locked FOR SHARE, so a takeover waits until
-- the caller's write has committed (and a write after one sees the new row).
CREATE FUNCTION payments.backfill_require_leader() RETURNS text
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_leader_id text;
BEGIN
    SELECT l.leader_id INTO v_leader_id
    FROM payments.worker_leader AS l
    WHERE l.backend_pid = pg_backend_pid()
      AND l.backend_start = payments.backend_start()
      AND l.expires_at > now()
    FOR SHARE;
    IF v_leader_id IS NULL THEN
        RAISE EXCEPTION 'only the maintenance leader''s session may move the backfill''s position'
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    RETURN v_leader_id;
END
$$;

-- --- what the leader calls -----------------------------------------------------------------

-- Our queue's position; no row when no pass has been saved yet.
CREATE FUNCTION payments.backfill_position()
RETURNS TABLE (covered_at timestamptz, resume_created_gte bigint, resume_starting_after text,
               resume_started_at timestamptz)
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
#variable_conflict use_column
BEGIN
    RETURN QUERY
        SELECT b.covered_at, b.resume_created_gte, b.resume_starting_after, b.resume_started_at
        FROM payments.backfill_cursor AS b
        WHERE b.queue = payments.config_queue();
END
$$;

-- A pass read the list to its end: covered up to its start, and no unfinished
-- pass left. Returns whether the covered time moved: never back, so a pass
-- that began before the saved one changes nothing.
CREATE FUNCTION payments.backfill_pass_complete(p_started_at timestamptz) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_leader_id constant text := payments.backfill_require_leader();
BEGIN
    PERFORM payments.require(p_started_at IS NOT NULL, 'started_at is required');
    INSERT INTO payments.backfill_cursor AS b (queue, covered_at, updated_at, updated_by)
    VALUES (payments.config_queue(), p_started_at, now(), v_leader_id)
    ON CONFLICT (queue) DO UPDATE
    SET covered_at = EXCLUDED.covered_at,
        resume_created_gte = NULL,
        resume_starting_after = NULL,
        resume_started_at = NULL,
        updated_at = EXCLUDED.updated_at,
        updated_by = EXCLUDED.updated_by
    WHERE b.covered_at IS NULL OR b.covered_at < EXCLUDED.covered_at;
    RETURN FOUND;
END
$$;

-- A pass cut by max_pages: where the next one (perhaps another leader's)
-- continues; covered_at is left as it was. Returns whether it was saved: a
-- pass that began before the saved covered time has nothing left to continue.
CREATE FUNCTION payments.backfill_pass_cut(
    p_created_gte bigint, p_starting_after text, p_started_at timestamptz
) RETURNS boolean
LANGUAGE plpgsql VOLATILE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    v_leader_id constant text := payments.backfill_require_leader();
BEGIN
    PERFORM payments.require(p_created_gte >= 0, 'created_gte must be a Unix time');
    PERFORM payments.require(char_length(p_starting_after) BETWEEN 1 AND 255,
                             'starting_after must be 1 to 255 characters');
    PERFORM payments.require(p_started_at IS NOT NULL, 'started_at is required');
    INSERT INTO payments.backfill_cursor AS b
        (queue, resume_created_gte, resume_starting_after, resume_started_at, updated_at, updated_by)
    VALUES (payments.config_queue(), p_created_gte, p_starting_after, p_started_at, now(), v_leader_id)
    ON CONFLICT (queue) DO UPDATE
    SET resume_created_gte = EXCLUDED.resume_created_gte,
        resume_starting_after = EXCLUDED.resume_starting_after,
        resume_started_at = EXCLUDED.resume_started_at,
        updated_at = EXCLUDED.updated_at,
        updated_by = EXCLUDED.updated_by
    WHERE b.covered_at IS NULL OR b.covered_at < EXCLUDED.resume_started_at;
    RETURN FOUND;
END
$$;

-- --- grants --------------------------------------------------------------------------------

REVOKE ALL ON payments.backfill_cursor FROM PUBLIC;
REVOKE ALL ON FUNCTION
    payments.backfill_require_leader(),
    payments.backfill_position(),
    payments.backfill_pass_complete(timestamptz),
    payments.backfill_pass_cut(bigint, text, timestamptz)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    payments.backfill_position(),
    payments.backfill_pass_complete(timestamptz),
    payments.backfill_pass_cut(bigint, text, timestamptz)
TO payment_worker;

COMMIT;
