-- The pipeline's own bookkeeping: runs, snapshots, validations, models, the champion.
-- Safe to apply twice. Model versions and promotion events are append-only.
CREATE SCHEMA IF NOT EXISTS pipeline;

CREATE TABLE IF NOT EXISTS pipeline.training_runs (
    run_id         text PRIMARY KEY,
    triggered_by   text NOT NULL,             -- schedule | manual | cli | ...
    watermark      timestamptz NOT NULL,      -- rows recorded up to here are read
    params         jsonb NOT NULL DEFAULT '{}'::jsonb,
    status         text NOT NULL,             -- running | validation_failed | promoted | kept | failed
    reason         text,
    snapshot_hash  text,
    started_at     timestamptz NOT NULL DEFAULT now(),
    finished_at    timestamptz
);

CREATE TABLE IF NOT EXISTS pipeline.snapshots (
    snapshot_hash  text PRIMARY KEY,          -- SHA-256 of the snapshot file's bytes
    source_table   text NOT NULL,
    query          text NOT NULL,
    watermark      timestamptz NOT NULL,
    row_count      integer NOT NULL,
    path           text NOT NULL,
    first_run_id   text NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline.validation_results (
    run_id         text NOT NULL,
    snapshot_hash  text NOT NULL REFERENCES pipeline.snapshots,
    suite_name     text NOT NULL,
    success        boolean NOT NULL,
    statistics     jsonb NOT NULL,
    failures       jsonb NOT NULL,            -- failed expectations: type, column, sample row ids
    result         jsonb NOT NULL,            -- the full Great Expectations result
    created_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (run_id, snapshot_hash)
);

CREATE TABLE IF NOT EXISTS pipeline.model_versions (
    version           serial PRIMARY KEY,
    run_id            text NOT NULL UNIQUE,   -- one candidate per run: a retried task reuses it
    snapshot_hash     text NOT NULL REFERENCES pipeline.snapshots,
    artifact_hash     text NOT NULL,          -- SHA-256 of the joblib file
    artifact_path     text NOT NULL,
    model_family      text NOT NULL,
    params            jsonb NOT NULL,
    cv_metrics        jsonb NOT NULL,         -- per family: mean and std of CV RMSE
    train_rows        integer NOT NULL,
    holdout_rows      integer NOT NULL,
    holdout_start     jsonb NOT NULL,         -- first held-out row: timestamp and id
    library_versions  jsonb NOT NULL,
    code_version      text NOT NULL,
    created_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline.evaluations (
    run_id             text PRIMARY KEY,
    candidate_version  integer NOT NULL REFERENCES pipeline.model_versions,
    champion_version   integer REFERENCES pipeline.model_versions,
    holdout_rows       integer NOT NULL,
    candidate_metrics  jsonb NOT NULL,
    champion_metrics   jsonb,
    policy             jsonb NOT NULL,
    decision           text NOT NULL CHECK (decision IN ('promote', 'keep')),
    reason             text NOT NULL,
    created_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline.champion (
    slot         text PRIMARY KEY DEFAULT 'production' CHECK (slot = 'production'),
    version      integer NOT NULL REFERENCES pipeline.model_versions,
    run_id       text NOT NULL,
    promoted_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS pipeline.promotion_events (
    event_id      bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    from_version  integer REFERENCES pipeline.model_versions,
    to_version    integer NOT NULL REFERENCES pipeline.model_versions,
    run_id        text NOT NULL,
    actor         text NOT NULL,
    reason        text NOT NULL
);

CREATE OR REPLACE FUNCTION pipeline.refuse_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pipeline.% is append-only: % refused', TG_TABLE_NAME, TG_OP;
END $$;

DROP TRIGGER IF EXISTS promotion_events_append_only ON pipeline.promotion_events;
CREATE TRIGGER promotion_events_append_only
    BEFORE UPDATE OR DELETE ON pipeline.promotion_events
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

DROP TRIGGER IF EXISTS model_versions_append_only ON pipeline.model_versions;
CREATE TRIGGER model_versions_append_only
    BEFORE UPDATE OR DELETE ON pipeline.model_versions
    FOR EACH ROW EXECUTE FUNCTION pipeline.refuse_change();

CREATE OR REPLACE FUNCTION pipeline.refuse_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'pipeline.% is append-only: TRUNCATE refused', TG_TABLE_NAME;
END $$;

DROP TRIGGER IF EXISTS promotion_events_no_truncate ON pipeline.promotion_events;
CREATE TRIGGER promotion_events_no_truncate
    BEFORE TRUNCATE ON pipeline.promotion_events
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();

DROP TRIGGER IF EXISTS model_versions_no_truncate ON pipeline.model_versions;
CREATE TRIGGER model_versions_no_truncate
    BEFORE TRUNCATE ON pipeline.model_versions
    FOR EACH STATEMENT EXECUTE FUNCTION pipeline.refuse_truncate();
