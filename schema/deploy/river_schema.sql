-- Deploy payment_worker:river_schema
-- River's tables in schema `metadata`, in the state River's own migrations
-- 001-006 leave them, so that River's Go client (and its migration 007) accept
-- the result. Column order matters: River's generated code scans
-- `river_job.*` by position.
--
-- Existing deployments already have these tables (managed by River); then this
-- change only checks that they are new enough and creates nothing.

BEGIN;

CREATE SCHEMA IF NOT EXISTS metadata;

DO $river$
BEGIN
    IF to_regclass('metadata.river_job') IS NOT NULL THEN
        IF NOT EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = 'metadata' AND table_name = 'river_job'
              AND column_name = 'unique_states'
        ) OR to_regclass('metadata.river_queue') IS NULL THEN
            RAISE EXCEPTION 'metadata.river_job exists but predates River migration 006'
                USING HINT = 'Upgrade it first: river migrate-up --database-url ... --schema metadata';
        END IF;
        RETURN;
    END IF;

    CREATE TABLE metadata.river_migration (
        line text NOT NULL,
        version bigint NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        CONSTRAINT line_length CHECK (char_length(line) > 0 AND char_length(line) < 128),
        CONSTRAINT version_gte_1 CHECK (version >= 1),
        PRIMARY KEY (line, version)
    );

    CREATE TYPE metadata.river_job_state AS ENUM (
        'available', 'cancelled', 'completed', 'discarded', 'pending',
        'retryable', 'running', 'scheduled'
    );

    CREATE TABLE metadata.river_job (
        id bigserial PRIMARY KEY,
        state metadata.river_job_state NOT NULL DEFAULT 'available',
        attempt smallint NOT NULL DEFAULT 0,
        max_attempts smallint NOT NULL,
        attempted_at timestamptz,
        created_at timestamptz NOT NULL DEFAULT now(),
        finalized_at timestamptz,
        scheduled_at timestamptz NOT NULL DEFAULT now(),
        priority smallint NOT NULL DEFAULT 1,
        args jsonb NOT NULL,
        attempted_by text[],
        errors jsonb[],
        kind text NOT NULL,
        metadata jsonb NOT NULL DEFAULT '{}',
        queue text NOT NULL DEFAULT 'default',
        tags varchar(255)[] NOT NULL DEFAULT '{}',
        unique_key bytea,
        unique_states bit(8),
        CONSTRAINT finalized_or_finalized_at_null CHECK (
            (finalized_at IS NULL AND state NOT IN ('cancelled', 'completed', 'discarded')) OR
            (finalized_at IS NOT NULL AND state IN ('cancelled', 'completed', 'discarded'))
        ),
        CONSTRAINT max_attempts_is_positive CHECK (max_attempts > 0),
        CONSTRAINT priority_in_range CHECK (priority >= 1 AND priority <= 4),
        CONSTRAINT queue_length CHECK (char_length(queue) > 0 AND char_length(queue) < 128),
        CONSTRAINT kind_length CHECK (char_length(kind) > 0 AND char_length(kind) < 128)
    );

    CREATE INDEX river_job_kind ON metadata.river_job USING btree (kind);
    CREATE INDEX river_job_state_and_finalized_at_index ON metadata.river_job
        USING btree (state, finalized_at) WHERE finalized_at IS NOT NULL;
    CREATE INDEX river_job_prioritized_fetching_index ON metadata.river_job
        USING btree (state, queue, priority, scheduled_at, id);
    CREATE INDEX river_job_args_index ON metadata.river_job USING gin (args);
    CREATE INDEX river_job_metadata_index ON metadata.river_job USING gin (metadata);

    CREATE FUNCTION metadata.river_job_state_in_bitmask(bitmask bit(8), state metadata.river_job_state)
    RETURNS boolean LANGUAGE sql IMMUTABLE AS $fn$
        SELECT CASE state
            WHEN 'available' THEN get_bit(bitmask, 7)
            WHEN 'cancelled' THEN get_bit(bitmask, 6)
            WHEN 'completed' THEN get_bit(bitmask, 5)
            WHEN 'discarded' THEN get_bit(bitmask, 4)
            WHEN 'pending'   THEN get_bit(bitmask, 3)
            WHEN 'retryable' THEN get_bit(bitmask, 2)
            WHEN 'running'   THEN get_bit(bitmask, 1)
            WHEN 'scheduled' THEN get_bit(bitmask, 0)
            ELSE 0
        END = 1;
    $fn$;

    CREATE UNIQUE INDEX river_job_unique_idx ON metadata.river_job (unique_key)
        WHERE unique_key IS NOT NULL
          AND unique_states IS NOT NULL
          AND metadata.river_job_state_in_bitmask(unique_states, state);

    CREATE UNLOGGED TABLE metadata.river_leader (
        elected_at timestamptz NOT NULL,
        expires_at timestamptz NOT NULL,
        leader_id text NOT NULL,
        name text PRIMARY KEY DEFAULT 'default',
        CONSTRAINT name_length CHECK (name = 'default'),
        CONSTRAINT leader_id_length CHECK (char_length(leader_id) > 0 AND char_length(leader_id) < 128)
    );

    CREATE TABLE metadata.river_queue (
        name text PRIMARY KEY NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        metadata jsonb NOT NULL DEFAULT '{}'::jsonb,
        paused_at timestamptz,
        updated_at timestamptz NOT NULL
    );

    CREATE UNLOGGED TABLE metadata.river_client (
        id text PRIMARY KEY NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        metadata jsonb NOT NULL DEFAULT '{}',
        paused_at timestamptz,
        updated_at timestamptz NOT NULL,
        CONSTRAINT name_length CHECK (char_length(id) > 0 AND char_length(id) < 128)
    );

    CREATE UNLOGGED TABLE metadata.river_client_queue (
        river_client_id text NOT NULL REFERENCES metadata.river_client (id) ON DELETE CASCADE,
        name text NOT NULL,
        created_at timestamptz NOT NULL DEFAULT now(),
        max_workers bigint NOT NULL DEFAULT 0,
        metadata jsonb NOT NULL DEFAULT '{}',
        num_jobs_completed bigint NOT NULL DEFAULT 0,
        num_jobs_running bigint NOT NULL DEFAULT 0,
        updated_at timestamptz NOT NULL,
        PRIMARY KEY (river_client_id, name),
        CONSTRAINT name_length CHECK (char_length(name) > 0 AND char_length(name) < 128),
        CONSTRAINT num_jobs_completed_zero_or_positive CHECK (num_jobs_completed >= 0),
        CONSTRAINT num_jobs_running_zero_or_positive CHECK (num_jobs_running >= 0)
    );

    INSERT INTO metadata.river_migration (line, version)
    SELECT 'main', v FROM generate_series(1, 6) AS v;

    -- The revert drops River's tables only when this marker says we made them.
    COMMENT ON TABLE metadata.river_job IS 'created by payment-worker (sqitch change river_schema)';
END
$river$;

COMMIT;
